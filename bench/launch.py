"""The small training run with 1 and 2 CPU ranks (same total samples), and the launcher's own overhead.

Start-up: from `launch()` to the first logged training step (process start, import, data verify,
distributed init, graph compile). Shutdown: from the last logged step to `launch()` returning.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sknet.config import load_config
from sknet.data.synth import write_synthetic_layout
from sknet.launch.launcher import launch
from sknet.training.train_log import parse_step_line

SAMPLES = 640


def timed_launch(data: Path, out: Path, ranks: int) -> dict:
    cfg = load_config("cpu-smoke", [
        f"data.uri={data}", f"train.output_dir={out}", f"launch.ranks={ranks}", "train.epochs=1",
        f"data.num_train_samples={SAMPLES}", "train.batch_size=32", "train.log_every_steps=1",
        "train.checkpoint_every_steps=0",
    ])
    stamps: list[tuple[float, int, int]] = []

    def on_line(line: str) -> None:
        if line.startswith("[rank 0] ") and (found := parse_step_line(line)):
            stamps.append((time.monotonic(), found.step, found.total_steps))

    started = time.monotonic()
    launch(cfg, on_line=on_line)
    ended = time.monotonic()
    first, last = stamps[0][0], stamps[-1][0]
    steps = stamps[-1][2]
    train_seconds = last - first
    return {
        "ranks": ranks, "steps_per_rank": steps, "samples": SAMPLES, "wall_seconds": round(ended - started, 2),
        "startup_to_first_step_seconds": round(first - started, 2),
        "shutdown_after_last_step_seconds": round(ended - last, 2),
        "train_images_per_sec": round((steps - 1) * 32 * ranks / train_seconds, 1) if steps > 1 else None,
    }


def bench_launch() -> dict:
    with tempfile.TemporaryDirectory(prefix="sknet-bench-launch-") as scratch:
        scratch = Path(scratch)
        write_synthetic_layout(scratch / "data")
        rows = [timed_launch(scratch / "data", scratch / f"run-{ranks}", ranks) for ranks in (1, 2)]
    return {"benchmark": "launch", "model": "sknet_tiny (cifar stem), CPU", "rows": rows,
            "two_rank_speedup": round(rows[1]["train_images_per_sec"] / rows[0]["train_images_per_sec"], 2)}
