"""MINDIR export with a round-trip check (reload with `nn.GraphCell`, compare with the network), then the exported
model scored on the whole eval set against the checkpoint's metrics (`sknet.evaluation.exported`)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sknet.config import Config
from sknet.errors import ExportError
from sknet.evaluation.exported import require_scores, score_exported
from sknet.training.runtime import check_on_this_host, configure

log = logging.getLogger(__name__)


def check_out(out: str | Path) -> Path:
    """`out` as a Path, or `ExportError` when it does not name a .mindir file."""
    out = Path(out)
    if out.suffix != ".mindir":
        raise ExportError(f"--out {out}: expected a file name ending in .mindir")
    return out


def export_mindir(cfg: Config, checkpoint: str, out: str | Path, dynamic_batch: bool | None = None) -> dict:
    """Write `out` (.mindir) only if the reloaded graph matches the network within `export.tolerance`.

    Static export fixes the batch at `export.batch_size`; dynamic export leaves it free and is checked
    at two batch sizes. Returns path, sha256, size, input shape, the max abs difference and the network's
    trainable parameter count (`parameters`, counted from the loaded network: no second build).
    """
    import mindspore as ms
    from mindspore import nn

    from sknet.evaluation.evaluate import load_network
    from sknet.model import count_parameters

    out = check_out(out)
    dynamic = cfg.export.dynamic_batch if dynamic_batch is None else dynamic_batch
    configure(cfg.train.device_target, cfg.train.seed)
    network = load_network(cfg, checkpoint)
    size, batch = cfg.data.image_size, cfg.export.batch_size
    example = ms.Tensor(np.zeros((batch, 3, size, size), np.float32))
    spec = ms.Tensor(shape=[None, 3, size, size], dtype=ms.float32) if dynamic else example

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".partial-{os.getpid()}-{out.stem}")
    written = Path(f"{partial}.mindir")  # ms.export appends the suffix
    try:
        ms.export(network, spec, file_name=str(partial), file_format="MINDIR")
        graph = nn.GraphCell(ms.load(str(written)))
        rng = np.random.default_rng(cfg.train.seed)
        diff = 0.0
        for check_batch in ((batch, batch + 2) if dynamic else (batch,)):
            x = ms.Tensor(rng.standard_normal((check_batch, 3, size, size)).astype(np.float32))
            diff = max(diff, float(np.abs(graph(x).asnumpy() - network(x).asnumpy()).max()))
        if not diff <= cfg.export.tolerance:
            raise ExportError(
                f"exported {out.name} differs from the network by {diff:.3g} (max abs), "
                f"above export.tolerance={cfg.export.tolerance:g}; nothing was written"
            )
        os.replace(written, out)
    finally:
        written.unlink(missing_ok=True)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    log.info("exported %s (%s batch), round-trip max abs diff %.3g", out, "dynamic" if dynamic else "static", diff)
    return {
        "path": str(out), "sha256": digest, "bytes": out.stat().st_size, "dynamic_batch": dynamic,
        "input_shape": [None if dynamic else batch, 3, size, size], "max_abs_diff": diff,
        "parameters": count_parameters(network),
    }


def export_scored(cfg: Config, checkpoint: str, out: str | Path, checkpoint_metrics: Mapping,
                  dynamic_batch: bool | None = None) -> dict:
    """`export_mindir`, then the MINDIR scored on the eval set (`sknet.evaluation.exported.score_exported`): the result
    gains `exported_model`. A model whose top-1 is not the checkpoint's within `export.accuracy_tolerance` raises
    `ExportError` and is removed, so nothing can release it."""
    require_scores(checkpoint_metrics)  # before anything is built
    check_on_this_host(cfg)  # the scoring's dataset workers, before the export
    model = export_mindir(cfg, checkpoint, out, dynamic_batch=dynamic_batch)
    try:
        exported = score_exported(cfg, model, checkpoint_metrics)
    except ExportError as exc:
        Path(model["path"]).unlink()
        raise ExportError(f"{exc} ({model['path']} removed)") from None
    return {**model, "exported_model": exported}


def export_checked_against_checkpoint(cfg: Config, checkpoint: str, out: str | Path,
                                      dynamic_batch: bool | None = None) -> dict:
    """`sknet export --score`: the checkpoint scored on the eval set (`sknet.evaluation.evaluate.evaluate`), then
    `export_scored` against that score, as the flow's export task does with its evaluate task's metrics."""
    from sknet.evaluation.evaluate import evaluate

    check_out(out)  # before the evaluation's work
    return export_scored(cfg, checkpoint, out, evaluate(cfg, checkpoint), dynamic_batch=dynamic_batch)
