"""MindSpore process setup: device, graph mode, seeds. Import MindSpore only through here first."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping

from sknet.errors import ConfigError, SknetError


def check_numpy() -> None:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise SknetError(
            f"numpy {numpy.__version__} is installed, but mindspore 2.10 needs numpy 1.26.x "
            "(with numpy 2 its PyNative mode crashes in run_op_async): pip install 'numpy>=1.26,<2'"
        )


# oneDNN 3.10 (inside mindspore 2.10) picks a reference-speed convolution (`jit_uni_ncsp:conv+ref:any`)
# for NCHW on AVX-512 CPUs; capped at AVX2 it takes `gemm:jit`, measured 100-350x faster per 3x3 conv.
# It is read when oneDNN creates its first primitive, so it must be set before any MindSpore op runs.
CPU_ISA_CAP = "AVX2"


def device_id_for(device_target: str, environ: Mapping[str, str] = os.environ) -> int | None:
    """The device this process binds: `DEVICE_ID` when a rank table launched it (MindSpore would otherwise
    take device 0 for every rank); None under msrun/dynamic cluster (`MS_ROLE` set: msrun negotiates the
    device) and on CPU."""
    if device_target == "CPU" or "MS_ROLE" in environ or "DEVICE_ID" not in environ:
        return None
    try:
        return int(environ["DEVICE_ID"])
    except ValueError:
        raise SknetError(f"DEVICE_ID={environ['DEVICE_ID']!r}: expected a device number") from None


def configure(device_target: str = "CPU", seed: int | None = None, graph_mode: bool = True) -> None:
    """Select the device (the one `device_id_for` names) and execution mode, and seed MindSpore's and the
    dataset's generators. On CPU this also caps oneDNN at AVX2 unless `ONEDNN_MAX_CPU_ISA` is already set.
    """
    os.environ.setdefault("GLOG_v", "3")
    if device_target == "CPU":
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", CPU_ISA_CAP)
    check_numpy()
    import mindspore as ms
    import mindspore.dataset as ds

    try:
        device_id = device_id_for(device_target)
        if device_id is None:
            ms.set_device(device_target)
        else:
            ms.set_device(device_target, device_id)
    except (RuntimeError, ValueError) as exc:
        raise SknetError(
            f"train.device_target={device_target!r} is not usable on this machine ({exc}); "
            "use CPU here, or run on a host with that device"
        ) from None
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    if seed is not None:
        ms.set_seed(seed)
        ds.config.set_seed(seed)


ALL_REDUCE_GROUPS = 4  # gradient all-reduces per step, of about equal bytes


def fusion_split_indices(sizes: list[int], groups: int = ALL_REDUCE_GROUPS) -> list[int]:
    """`all_reduce_fusion_config` for parameters of these element counts (in the network's order): the indices
    that cut them into `groups` runs of about equal bytes. MindSpore fuses nothing when it is unset, which
    makes one all-reduce per gradient (273 for SKNet-50); the zoo cuts ResNet-50's 161 into three runs.
    Backprop produces the last layers' gradients first, so their run's all-reduce overlaps the rest."""
    total, cuts, running = sum(sizes), [], 0
    for index, size in enumerate(sizes[:-1], 1):
        running += size
        if running * groups >= total * (len(cuts) + 1):
            cuts.append(index)
        if len(cuts) == groups - 1:
            break
    return cuts


def loss_scaling(train) -> tuple[object, float]:
    """(loss-scale manager, the optimizer's loss_scale) for `train.loss_scale_mode`.

    `fixed`: MindSpore's FixedLossScaleManager without dropping overflowed updates (the only kind MindSpore
    runs on CPU); the optimizer divides by the same scale. `dynamic`: DynamicLossScaleManager starting at
    `train.loss_scale`, halving on an overflow (whose update is skipped) and doubling after 1000 clean steps;
    the optimizer then sees unscaled gradients. Ascend and GPU only.
    """
    import mindspore as ms

    if train.loss_scale_mode == "dynamic":
        return ms.DynamicLossScaleManager(init_loss_scale=train.loss_scale, scale_factor=2,
                                          scale_window=DYNAMIC_SCALE_WINDOW), 1.0
    return ms.FixedLossScaleManager(train.loss_scale, drop_overflow_update=False), train.loss_scale


DYNAMIC_SCALE_WINDOW = 1000  # clean steps before a dynamic loss scale doubles


def check_on_this_host(cfg, cpus: int | None = None):
    """`cfg` if this host can run its ranks, else `ConfigError`: the checks only the host running a rank can make
    (a config is also loaded where it only plans, e.g. cifar10-ascend8's 8 workers on a 2-core CI runner).

    MindSpore's dataset ops take 1 to the host's CPU count of workers, else a bare ValueError
    (`check_num_parallel_workers`, mindspore/dataset/core/validator_helpers.py: `value > cpu_count()`, with
    multiprocessing's cpu_count). `cpus` stands in for the CPU count."""
    cpus = cpus or multiprocessing.cpu_count()
    if cfg.data.num_parallel_workers > cpus:
        raise ConfigError(f"data.num_parallel_workers={cfg.data.num_parallel_workers}: expected an integer in "
                          f"[1, {cpus}] on this host (its CPU count: MindSpore's dataset ops refuse more workers)")
    return cfg
