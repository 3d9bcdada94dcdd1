"""One rank of the collective smoke, started by the real launcher (see `sknet.preflight.collective`).

Joins the group as training does (`mindspore.communication.init()`), all-reduces (SUM: the only reduction
MindSpore's CPU collectives support) a tensor of ones, then times a 64 MiB all-reduce a few times. Rank 0
writes what it saw to `--out` as JSON; the check judges it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

PAYLOAD_BYTES = 64 * 2**20  # 64 MiB of float32
REPEATS = 5  # timed all-reduces after one warm-up; the median is reported
BACKENDS = {"CPU": "mccl", "Ascend": "hccl", "GPU": "nccl"}


def _all_reduce_sum():
    """A graph-mode cell whose output is the SUM all-reduce of its input over the world group."""
    from mindspore import nn, ops

    class AllReduceSum(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

        def construct(self, x):
            return self.all_reduce(x)

    return AllReduceSum()


def _wait(output, device_target: str) -> None:
    """Return once `output` is computed: the device stream synchronized (MindSpore has no CPU stream to sync;
    there the host copy waits for the result)."""
    import mindspore as ms

    if device_target == "CPU":
        output.asnumpy()
    else:
        ms.runtime.synchronize()


def _timed(cell, tensor, device_target: str, repeats: int) -> list[float]:
    """Seconds per all-reduce of `tensor`, each waited for (the first call, which compiles, untimed)."""
    _wait(cell(tensor), device_target)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        _wait(cell(tensor), device_target)
        seconds.append(time.perf_counter() - started)
    return seconds


def _range(values) -> list[float]:
    """[min, max] of an array: equal when every element is the same."""
    return [float(values.min()), float(values.max())]


def measure(device_target: str, payload_bytes: int = PAYLOAD_BYTES, repeats: int = REPEATS) -> dict:
    """Join the group, check an all-reduce of ones, time the payload's all-reduce; leave the group."""
    from sknet.training.runtime import configure

    configure(device_target, graph_mode=True)
    import mindspore as ms
    import numpy as np
    from mindspore.communication import get_group_size, get_rank, init, release

    init()
    rank, size = get_rank(), get_group_size()
    cell = _all_reduce_sum()
    ones_sum = _range(cell(ms.Tensor(np.ones((8,), np.float32))).asnumpy())
    payload = ms.Tensor(np.ones((payload_bytes // 4,), np.float32))
    seconds = _timed(cell, payload, device_target, repeats)
    payload_sum = _range(cell(payload).asnumpy())  # read before release() frees the memory
    cell(ms.Tensor(np.ones((1,), np.float32))).asnumpy()  # every rank is past the timed calls before any leaves
    release()
    median = statistics.median(seconds)
    return {"rank": rank, "group_size": size, "backend": BACKENDS.get(device_target, "?"),
            "ones_sum": ones_sum, "payload_bytes": payload_bytes,
            "payload_sum": payload_sum, "seconds": seconds,
            "median_seconds": median, "algbw_gbps": payload_bytes / median / 1e9}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="where rank 0 writes its JSON result")
    parser.add_argument("--device-target", default="CPU", choices=sorted(BACKENDS))
    parser.add_argument("--megabytes", type=int, default=PAYLOAD_BYTES // 2**20, help="payload in MiB")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    result = measure(args.device_target, args.megabytes * 2**20, args.repeats)
    print(json.dumps({k: result[k] for k in ("rank", "group_size", "ones_sum", "algbw_gbps")}), flush=True)
    if result["rank"] == 0:
        out = Path(args.out)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
