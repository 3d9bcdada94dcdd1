"""The checkpoint mirror's cost to training: a 100 MB checkpoint uploaded to the moto S3 server every few
steps, synchronously on the training thread (as before) vs through `BackgroundUploads`.

A step is 100 ms in which the host waits, as it waits for the device on an NPU (181 ms/step in the zoo's
Ascend run); the mean step time of each way, checkpoint writes and stalls included, gives the ratio.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.s3 import BUCKET, scratch_s3
from sknet.storage import S3Store
from sknet.training.checkpoint import BackgroundUploads, CheckpointMirror, checkpoint_path, write_record

CHECKPOINT_MB = 100
STEPS = 40
CHECKPOINT_EVERY = 10


STEP_SECONDS = 0.1


def _train(run: Path, checkpoint) -> float:
    """Mean seconds per step over STEPS steps, `checkpoint(step)` called every CHECKPOINT_EVERY."""
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        time.sleep(STEP_SECONDS)
        if step % CHECKPOINT_EVERY == 0:
            path = checkpoint_path(run, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(CHECKPOINT_MB * 2**20))
            write_record(path, step)  # as save_checkpoint does
            checkpoint(step)
    return (time.perf_counter() - started) / STEPS


def bench_mirror() -> dict:
    with scratch_s3("mirror") as (scratch, server):
        def mirror(name: str) -> CheckpointMirror:
            return CheckpointMirror(S3Store(f"s3://{BUCKET}/{name}", endpoint_url=server.endpoint))

        without = _train(scratch / "none", lambda step: None)
        sync = mirror("sync")
        synchronous = _train(scratch / "sync", lambda step: sync.push(scratch / "sync", step, keep=2))
        started = time.perf_counter()
        with BackgroundUploads(mirror("background"), scratch / "background", keep=2) as uploads:
            background = _train(scratch / "background", uploads.submit)
            trained = time.perf_counter() - started
        drained = time.perf_counter() - started - trained
    return {
        "benchmark": "mirror", "checkpoint_mb": CHECKPOINT_MB, "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY,
        "step_seconds": {"no_mirror": round(without, 4), "synchronous": round(synchronous, 4),
                         "background": round(background, 4)},
        "synchronous_over_background_step_time": round(synchronous / background, 2),
        "background_over_no_mirror_step_time": round(background / without, 2),
        "drain_seconds_after_the_last_step": round(drained, 2),
        "sink_mode": "not measured here: MindSpore has no dataset sink on CPU (mindspore.data_sink raises); "
                     "on Ascend/GPU the Ascend profile syncs with the host every 65 steps",
    }
