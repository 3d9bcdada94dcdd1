"""Train-step speed of SKNet-50 vs ResNeXt-50 at 32×32, batch 32, fp32, graph mode, on this machine.

Speed: both networks in one process per oneDNN setting; per row the compile time (first step), mean
step time over the timed steps after warm-up, images/s and CPU cores kept busy (process CPU time / wall
time). Memory: each network alone in a fresh process (allocator pools would hide the second one), peak
RSS after a few steps, next to the RSS of the process before the network was built.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import numpy as np
import psutil

BATCH = 32


def train_step(name: str, stem: str):
    """(step cell, images, labels) for a fp32 Momentum train step with loss scale, as in training."""
    import mindspore as ms
    from mindspore import nn

    from sknet.model import build_model

    ms.set_seed(0)
    network = build_model(name, 10, stem)
    optimizer = nn.Momentum(network.trainable_params(), learning_rate=0.01, momentum=0.9, loss_scale=1024.0)
    step = ms.amp.build_train_network(
        network, optimizer, nn.CrossEntropyLoss(), level="O0",
        loss_scale_manager=ms.FixedLossScaleManager(1024.0, drop_overflow_update=False),
    )
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, BATCH).astype(np.int32))
    return step, network, images, labels


def measure_speed(name: str, stem: str, timed_steps: int, warmup_steps: int) -> dict:
    from sknet.model import count_parameters

    step, network, images, labels = train_step(name, stem)
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    step(images, labels).asnumpy()
    compile_seconds = time.perf_counter() - started
    compile_cores = (_cpu_seconds() - cpu_before) / compile_seconds
    for _ in range(warmup_steps):
        step(images, labels).asnumpy()
    cpu_before, wall_before = _cpu_seconds(), time.perf_counter()
    durations = []
    for _ in range(timed_steps):
        began = time.perf_counter()
        step(images, labels).asnumpy()
        durations.append(time.perf_counter() - began)
    wall = time.perf_counter() - wall_before
    cpu = _cpu_seconds() - cpu_before
    median = float(np.median(durations))
    return {
        "model": name, "stem": stem, "parameters": count_parameters(network), "batch": BATCH,
        "compile_seconds": round(compile_seconds, 2), "compile_cores_busy": round(compile_cores, 2),
        "step_seconds": round(median, 4),
        "step_seconds_min_max": [round(min(durations), 4), round(max(durations), 4)],
        "images_per_sec": round(BATCH / median, 1), "cores_busy": round(cpu / wall, 2),
        "timed_steps": timed_steps, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def measure_memory(name: str, stem: str, steps: int = 2) -> dict:
    import psutil

    before = psutil.Process().memory_info().rss
    step, _, images, labels = train_step(name, stem)
    for _ in range(steps):
        step(images, labels).asnumpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": name, "stem": stem, "rss_before_mb": round(before / 2**20),
            "peak_rss_mb": round(peak / 2**20)}


def _configure() -> None:
    os.environ.setdefault("GLOG_v", "3")
    from sknet.training.runtime import configure

    configure("CPU")  # caps oneDNN at AVX2 unless ONEDNN_MAX_CPU_ISA is already set


def machine() -> dict:
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version()}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":  # python -m bench.models speed '<rows json>' | memory MODEL STEM
    _configure()
    if sys.argv[1] == "speed":
        results = []
        for row in json.loads(sys.argv[2]):
            results.append(measure_speed(*row))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    else:
        results = measure_memory(sys.argv[2], sys.argv[3])
    print(json.dumps(results))
