"""MindSpore process setup: device, graph mode, seeds. Import MindSpore only through here first."""

from __future__ import annotations

import os

from sknet.errors import SknetError


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


def configure(device_target: str = "CPU", seed: int | None = None, graph_mode: bool = True) -> None:
    """Select the device and execution mode, and seed MindSpore's and the dataset's generators.

    On CPU this also caps oneDNN at AVX2 unless `ONEDNN_MAX_CPU_ISA` is already set.
    """
    os.environ.setdefault("GLOG_v", "3")
    if device_target == "CPU":
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", CPU_ISA_CAP)
    check_numpy()
    import mindspore as ms
    import mindspore.dataset as ds

    try:
        ms.set_device(device_target)
    except (RuntimeError, ValueError) as exc:
        raise SknetError(
            f"train.device_target={device_target!r} is not usable on this machine ({exc}); "
            "use CPU here, or run on a host with that device"
        ) from None
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    if seed is not None:
        ms.set_seed(seed)
        ds.config.set_seed(seed)
