"""Score the model that ships: the exported MINDIR, run by the runtimes that serve it, on the whole eval set.

`sknet.evaluation.evaluate.evaluate_forward` runs the same samples in the same order as the checkpoint's
evaluation; only the forward function differs. MindSpore's `nn.GraphCell(ms.load(path))` runs a MINDIR only at
the input shape it was exported with, so a static-batch model is fed exactly `export.batch_size` images a call:
`evaluate_forward` pads the last partial batch and drops the padded rows' logits (in inference mode every row is
computed on its own).
MindSpore Lite scores it too where `mindspore_lite` is importable; elsewhere (no wheel for Python 3.11 on PyPI)
that check is recorded as skipped, with the reason.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from sknet.config import Config
from sknet.errors import ExportError

log = logging.getLogger(__name__)

GRAPH_CELL = "mindspore.nn.GraphCell"
LITE = "mindspore_lite"
SCORES = ("top_1_accuracy", "top_5_accuracy", "samples")

Run = Callable[[object], object]  # a batch of float32 NCHW images (a MindSpore tensor) → logits


def graph_cell_run(mindir: str | Path) -> Run:
    """The MINDIR through `nn.GraphCell(ms.load(path))`, MindSpore's own way to run an exported graph."""
    import mindspore as ms
    from mindspore import nn

    return nn.GraphCell(ms.load(str(mindir)))


def lite_run(mindir: str | Path, device_target: str) -> Run:
    """The MINDIR through MindSpore Lite's `Model` (cloud inference reads MindSpore's MINDIR as it is)."""
    import mindspore_lite as mslite

    context = mslite.Context()
    context.target = [device_target.lower()]
    model = mslite.Model()
    model.build_from_file(str(mindir), mslite.ModelType.MINDIR, context)

    def run(images) -> np.ndarray:
        x = np.ascontiguousarray(images.asnumpy(), dtype=np.float32)
        inputs = model.get_inputs()
        if list(inputs[0].shape) != list(x.shape):  # a dynamic batch: Lite is told each new shape
            model.resize(inputs, [list(x.shape)])
        inputs[0].set_data_from_numpy(x)
        return model.predict(inputs)[0].get_data_to_numpy()
    return run


def score_runtime(cfg: Config, model: Mapping, runtime: str, run: Run) -> dict:
    """{"runtime", "top_1_accuracy", "top_5_accuracy", "samples", "seconds"} of `run` on the whole eval set."""
    from sknet.evaluation.evaluate import evaluate_forward

    batch = None if model["dynamic_batch"] else cfg.export.batch_size
    started = time.perf_counter()
    metrics = evaluate_forward(cfg, run, batch_size=batch,
                               what=f"{Path(model['path']).name} through {runtime}")
    seconds = round(time.perf_counter() - started, 2)
    log.info("%s through %s: top-1 %.4f, top-5 %.4f on %d samples (%.1f s)", model["path"], runtime,
             metrics["top_1_accuracy"], metrics["top_5_accuracy"], metrics["samples"], seconds)
    return {"runtime": runtime, **{key: metrics[key] for key in SCORES}, "seconds": seconds}


def lite_score(cfg: Config, model: Mapping) -> dict:
    """The Lite runtime's score, or {"runtime": "mindspore_lite", "skipped": why} where it cannot be imported."""
    try:
        import mindspore_lite  # noqa: F401
    except ImportError as exc:
        return {"runtime": LITE, "skipped": f"not importable on Python {platform.python_version()} ({exc}); PyPI has "
                                           "no MindSpore Lite wheel for Python 3.11"}
    return score_runtime(cfg, model, LITE, lite_run(model["path"], cfg.train.device_target))


def require_scores(checkpoint_metrics: Mapping) -> None:
    """The checkpoint's metrics must hold a top-1 in [0, 1] and a sample count to compare with."""
    top_1, samples = checkpoint_metrics.get("top_1_accuracy"), checkpoint_metrics.get("samples")
    if not (isinstance(top_1, (int, float)) and 0 <= top_1 <= 1 and isinstance(samples, int) and samples > 0):
        raise ExportError(f"checkpoint metrics: expected top_1_accuracy in [0, 1] and samples ≥ 1 (the evaluation's "
                          f"result), got top_1_accuracy={top_1!r}, samples={samples!r}")


def check_score(cfg: Config, model: Mapping, exported: Mapping, checkpoint_metrics: Mapping) -> None:
    """Raise `ExportError` when the exported model's top-1 is not the checkpoint's, on the same samples, within
    `export.accuracy_tolerance`."""
    name, runtime = Path(model["path"]).name, exported["runtime"]
    if exported["samples"] != checkpoint_metrics.get("samples"):
        raise ExportError(f"{name} through {runtime} was scored on {exported['samples']} samples, the checkpoint on "
                          f"{checkpoint_metrics.get('samples')}: expected the same eval set; nothing is released")
    ours, theirs = exported["top_1_accuracy"], checkpoint_metrics["top_1_accuracy"]
    difference = abs(ours - theirs)
    if not difference <= cfg.export.accuracy_tolerance:
        raise ExportError(
            f"{name} through {runtime} scores top-1 {ours:.6f} on {exported['samples']} samples, the checkpoint "
            f"{theirs:.6f}: they differ by {difference:.6f}, above export.accuracy_tolerance="
            f"{cfg.export.accuracy_tolerance:g}; nothing is released")


def score_exported(cfg: Config, model: Mapping, checkpoint_metrics: Mapping) -> dict:
    """The exported model's score through `nn.GraphCell` (and MindSpore Lite where importable), each checked against
    the checkpoint's (`check_score`). Returns the lineage's `exported_model`: the GraphCell score, the tolerance,
    and `other_runtimes` (Lite's score, or why it was skipped)."""
    graph = score_runtime(cfg, model, GRAPH_CELL, graph_cell_run(model["path"]))
    check_score(cfg, model, graph, checkpoint_metrics)
    lite = lite_score(cfg, model)
    if "skipped" in lite:
        log.info("%s not scored through %s: %s", model["path"], LITE, lite["skipped"])
    else:
        check_score(cfg, model, lite, checkpoint_metrics)
    return {**graph, "checkpoint_top_1_accuracy": checkpoint_metrics["top_1_accuracy"],
            "accuracy_tolerance": cfg.export.accuracy_tolerance, "other_runtimes": [lite]}
