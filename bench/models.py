"""Train-step speed of SKNet-50 vs ResNeXt-50 at 32×32, batch 32, fp32, graph mode, on this machine.

Both networks are measured in one process per oneDNN setting. Reported per row: compile time (first
step), mean step time over the timed steps after warm-up, images/s, CPU cores kept busy (process CPU
time / wall time) and the process's peak RSS growth while the row ran.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time

import numpy as np
import psutil

BATCH = 32


class PeakRss:
    """Samples this process's RSS every 50 ms; `peak` is the highest seen since `reset`."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def reset(self) -> int:
        self.peak = self.process.memory_info().rss
        return self.peak

    def stop(self):
        self._stop.set()


def measure(name: str, stem: str, timed_steps: int, warmup_steps: int, rss: PeakRss) -> dict:
    import mindspore as ms
    from mindspore import nn

    from sknet.model import build_model, count_parameters

    baseline = rss.reset()
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
    started = time.perf_counter()
    step(images, labels).asnumpy()
    compile_seconds = time.perf_counter() - started
    for _ in range(warmup_steps):
        step(images, labels).asnumpy()
    cpu_before, wall_before = psutil.Process().cpu_times(), time.perf_counter()
    for _ in range(timed_steps):
        step(images, labels).asnumpy()
    wall = time.perf_counter() - wall_before
    cpu_after = psutil.Process().cpu_times()
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {
        "model": name, "stem": stem, "parameters": count_parameters(network), "batch": BATCH,
        "compile_seconds": round(compile_seconds, 2), "step_seconds": round(wall / timed_steps, 4),
        "images_per_sec": round(BATCH * timed_steps / wall, 1), "cores_busy": round(cpu / wall, 2),
        "peak_rss_growth_mb": round((rss.peak - baseline) / 2**20), "timed_steps": timed_steps,
    }


def run(rows: list[tuple[str, str, int, int]]) -> list[dict]:
    os.environ.setdefault("GLOG_v", "3")
    from sknet.runtime import configure

    configure("CPU")  # caps oneDNN at AVX2 unless ONEDNN_MAX_CPU_ISA is already set
    rss = PeakRss()
    results = []
    for name, stem, timed, warmup in rows:
        result = measure(name, stem, timed, warmup, rss)
        result["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    rss.stop()
    return results


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


if __name__ == "__main__":  # one measuring process: python -m bench.models '<rows json>'
    print(json.dumps(run([tuple(r) for r in json.loads(sys.argv[1])])))
