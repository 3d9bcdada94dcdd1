"""`make bench`: run every benchmark, write bench/results/<name>.json, print a JSON summary.

`python -m bench storage` (or mirror, launch, flow, models, compiles, chaos) runs one; `python -m bench chaos --runs N
--seed S` passes its options on (see bench/chaos/run.py). Exits 1 when the chaos bench's checks fail."""

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
    ("sknet50", "imagenet", 15, 2), ("resnext50", "imagenet", 15, 2),
    ("sknet50", "cifar", 5, 1), ("resnext50", "cifar", 5, 1),
]
# the same SKNet-50 row with oneDNN free to use AVX-512, which on this CPU picks a reference kernel
DEFAULT_ISA_ROWS = [("sknet50", "imagenet", 3, 1), ("resnext50", "imagenet", 3, 1)]


def in_process(*args: str, isa: str | None = None):
    """Run `python -m bench.models ARGS` in a fresh process; `isa` sets ONEDNN_MAX_CPU_ISA."""
    env = {**os.environ, "GLOG_v": "3"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, "-m", "bench.models", *args], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(rows: list[dict], stem: str) -> float:
    by_model = {r["model"]: r["step_seconds"] for r in rows if r["stem"] == stem}
    return round(by_model["sknet50"] / by_model["resnext50"], 3)


def bench_models() -> dict:
    started = time.time()
    rows = in_process("speed", json.dumps(MODEL_ROWS))
    memory = [in_process("memory", name, stem) for name, stem, _, _ in MODEL_ROWS]
    default_isa = in_process("speed", json.dumps(DEFAULT_ISA_ROWS), isa="ALL")
    return {
        "benchmark": "models", "machine": machine(), "input": "32x32, batch 32, fp32, graph mode, CPU",
        "rows": rows,
        "memory": memory,
        "sk_over_resnext_step_time": {"imagenet": ratio(rows, "imagenet"), "cifar": ratio(rows, "cifar")},
        "goal": "sk/resnext ≤ 1.25 (paper FLOP ratio 1.05); zoo SKNet-50 ≈ 1.35 s/step, timm ≈ 0.72 s/step",
        "onednn_default_isa_rows": default_isa,
        "onednn_avx2_speedup_imagenet_sknet50": round(
            default_isa[0]["step_seconds"] / rows[0]["step_seconds"], 1),
        "seconds": round(time.time() - started, 1),
    }


def print_table(report: dict) -> None:
    """A human summary on stderr; stdout stays one JSON document."""
    memory = {(m["model"], m["stem"]): m["peak_rss_mb"] for m in report["memory"]}
    print(f"\n{'model':10} {'stem':9} {'isa':5} {'compile s':>9} {'step s':>7} {'img/s':>6} {'cores':>5} "
          f"{'peak MB':>8}",
          file=sys.stderr)
    for row in report["rows"] + report["onednn_default_isa_rows"]:
        print(f"{row['model']:10} {row['stem']:9} {row['onednn_max_cpu_isa']:5} {row['compile_seconds']:9.1f} "
              f"{row['step_seconds']:7.3f} {row['images_per_sec']:6.1f} {row['cores_busy']:5.2f} "
              f"{memory.get((row['model'], row['stem']), '') if row['onednn_max_cpu_isa'] == 'AVX2' else '':>8}",
              file=sys.stderr)
    print(f"SK/ResNeXt step time: {report['sk_over_resnext_step_time']}", file=sys.stderr)


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    summary = {}
    from bench.compiles import bench_compiles
    from bench.flow import bench_flow
    from bench.launch import bench_launch
    from bench.mirror import bench_mirror
    from bench.storage import bench_storage

    if sys.argv[1:2] == ["chaos"]:  # `python -m bench chaos [--runs N] [--seed S]`: its own options and output
        from bench.chaos import main as chaos_main

        sys.exit(chaos_main(sys.argv[2:]))
    from bench.chaos import bench_chaos
    from bench.chaos import print_table as print_chaos_table

    only = set(sys.argv[1:])  # e.g. `python -m bench storage`
    for name, bench in {"storage": bench_storage, "mirror": bench_mirror, "launch": bench_launch, "flow": bench_flow,
                        "models": bench_models, "compiles": bench_compiles, "chaos": bench_chaos}.items():
        if only and name not in only:
            continue
        report = bench()
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        summary[name] = report
    if "models" in summary:
        print_table(summary["models"])
    if "chaos" in summary:
        print_chaos_table(summary["chaos"])
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    if "chaos" in summary and not summary["chaos"]["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
