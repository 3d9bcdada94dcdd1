"""Graph compiles per run, and what the compile cache (under the run directory) saves when a run resumes.

For each model: a 3-epoch run from scratch (its compiles counted: one graph for all epochs), then the same run
resumed from its step-8 checkpoint twice, once with the compile cache the first run left and once without
(`MS_COMPILER_CACHE_ENABLE=0`). Start-up is `startup_seconds` of result.json: from `Model.train`'s start to its
first step boundary (the compile, or the cache load, and one step). CPU only; on Ascend a compile of SKNet-50
takes minutes, so the saving there is larger.

    python -m bench compiles
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from sknet.data.synth import write_synthetic_layout

ROWS = [("sknet_tiny", "cifar", 32), ("sknet50", "cifar", 8)]  # model, stem, batch
STEPS_PER_EPOCH, EPOCHS, RESUME_AT = 4, 3, 8


@contextlib.contextmanager
def count_compiles():
    """A Counter of the graphs MindSpore compiles (fresh compiles of its `_CellGraphExecutor.compile`, whose
    second return value says whether it compiled), by Cell class name, while the block runs."""
    from mindspore.graph import api

    compiled: Counter = Counter()
    original = api._CellGraphExecutor.compile

    def counting(self, obj, *args, **kwargs):
        phase, fresh = original(self, obj, *args, **kwargs)
        if fresh:
            compiled[type(obj).__name__] += 1
        return phase, fresh

    api._CellGraphExecutor.compile = counting
    try:
        yield compiled
    finally:
        api._CellGraphExecutor.compile = original


def overrides(data: Path, out: Path, model: str, stem: str, batch: int) -> list[str]:
    return [f"data.uri={data}", f"train.output_dir={out}", f"model.name={model}", f"model.stem={stem}",
            f"train.batch_size={batch}", f"data.num_train_samples={STEPS_PER_EPOCH * batch}", f"train.epochs={EPOCHS}",
            "train.log_every_steps=1", "train.checkpoint_every_steps=4", "train.keep_checkpoints=10"]


def train_counting(args: list[str]) -> dict:
    """One training process (this module as its entry script, so MindSpore's compile cache can be on)."""
    from sknet.config import load_config
    from sknet.training.loop import train

    with count_compiles() as compiled:
        result = train(load_config("cpu-smoke", args)).to_dict()
    return {"result": result, "compiles": sum(compiled.values())}


def run(args: list[str], cache: bool) -> dict:
    env = {**os.environ, "GLOG_v": "3", "MS_COMPILER_CACHE_ENABLE": "1" if cache else "0"}
    proc = subprocess.run([sys.executable, __file__, json.dumps(args)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resumed_copy(run_dir: Path, target: Path, keep_cache: bool) -> Path:
    """`run_dir` as it was at step RESUME_AT: later checkpoints gone (and the compile cache, unless kept)."""
    shutil.copytree(run_dir, target)
    for checkpoint in (target / "checkpoints").glob("step-*"):
        if int(checkpoint.name[5:13]) > RESUME_AT:
            checkpoint.unlink()
    if not keep_cache:
        shutil.rmtree(target / "compile-cache", ignore_errors=True)
    return target


def row(data: Path, scratch: Path, model: str, stem: str, batch: int) -> dict:
    first = run(overrides(data, scratch / model, model, stem, batch), cache=True)
    warm_dir = resumed_copy(scratch / model, scratch / f"{model}-warm", keep_cache=True)
    cold_dir = resumed_copy(scratch / model, scratch / f"{model}-cold", keep_cache=False)
    warm = run(overrides(data, warm_dir, model, stem, batch), cache=True)
    cold = run(overrides(data, cold_dir, model, stem, batch), cache=False)
    saved = cold["result"]["startup_seconds"] - warm["result"]["startup_seconds"]
    return {"model": model, "stem": stem, "batch": batch, "epochs": EPOCHS, "steps": first["result"]["steps"],
            "compiles_per_run": first["compiles"], "first_run_startup_seconds": first["result"]["startup_seconds"],
            "resume_startup_seconds_with_cache": warm["result"]["startup_seconds"],
            "resume_startup_seconds_without_cache": cold["result"]["startup_seconds"],
            "compile_cache_saves_seconds": round(saved, 2),
            "resumed_from_step": warm["result"]["resumed_from_step"]}


def bench_compiles() -> dict:
    with tempfile.TemporaryDirectory(prefix="sknet-bench-compiles-") as scratch:
        scratch = Path(scratch)
        write_synthetic_layout(scratch / "data")
        rows = [row(scratch / "data", scratch, *spec) for spec in ROWS]
    return {"benchmark": "compiles", "device": "CPU", "rows": rows,
            "goal": "one compile per run (all epochs); a resume with the cache starts faster than without"}


if __name__ == "__main__":
    print(json.dumps(train_counting(json.loads(sys.argv[1]))))
