"""`make bench`: run every benchmark, write bench/results/<name>.json, print a JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.models import machine

RESULTS = Path(__file__).parent / "results"
# (model, stem, timed steps, warm-up steps)
MODEL_ROWS = [
    ("sknet50", "imagenet", 10, 2), ("resnext50", "imagenet", 10, 2),
    ("sknet50", "cifar", 3, 1), ("resnext50", "cifar", 3, 1),
]
# the same SKNet-50 row with oneDNN free to use AVX-512, which on this CPU picks a reference kernel
DEFAULT_ISA_ROWS = [("sknet50", "imagenet", 3, 1), ("resnext50", "imagenet", 3, 1)]


def measure_in_process(rows, isa: str | None) -> list[dict]:
    env = {**os.environ, "GLOG_v": "3"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, "-m", "bench.models", json.dumps(rows)], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(rows: list[dict], stem: str) -> float:
    by_model = {r["model"]: r["step_seconds"] for r in rows if r["stem"] == stem}
    return round(by_model["sknet50"] / by_model["resnext50"], 3)


def bench_models() -> dict:
    started = time.time()
    rows = measure_in_process(MODEL_ROWS, isa=None)
    default_isa = measure_in_process(DEFAULT_ISA_ROWS, isa="DEFAULT")
    return {
        "benchmark": "models", "machine": machine(), "input": "32x32, batch 32, fp32, graph mode, CPU",
        "rows": rows,
        "sk_over_resnext_step_time": {"imagenet": ratio(rows, "imagenet"), "cifar": ratio(rows, "cifar")},
        "goal": "sk/resnext ≤ 1.25 (paper FLOP ratio 1.05); zoo SKNet-50 ≈ 1.35 s/step, timm ≈ 0.72 s/step",
        "onednn_default_isa_rows": default_isa,
        "onednn_avx2_speedup_imagenet_sknet50": round(
            default_isa[0]["step_seconds"] / rows[0]["step_seconds"], 1),
        "seconds": round(time.time() - started, 1),
    }


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    summary = {}
    for name, bench in {"models": bench_models}.items():
        report = bench()
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        summary[name] = report
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
