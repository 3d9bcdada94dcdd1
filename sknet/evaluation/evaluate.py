"""Top-1 / top-5 accuracy, per-class accuracy, the confusion matrix and mean cross-entropy of a model on the
CIFAR-10 test split: a checkpoint (`evaluate`) or any forward function, e.g. an exported graph (`evaluate_forward`).

Each sample's label and top-1 prediction can be kept (`predictions_out`, a JSON file `{"labels", "top_1"}` in
the eval order) for a paired comparison of two models on the same samples (`sknet.release.champion`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sknet.config import Config
from sknet.data.layout import local_dataset_path, verify_layout
from sknet.evaluation.calibration import calibration
from sknet.training.runtime import check_on_this_host, configure

log = logging.getLogger(__name__)


def load_network(cfg: Config, checkpoint: str, *, verified: bool = False):
    """The configured network with the checkpoint's parameters, in inference mode (`verified`: the caller has
    checked the file's integrity already, e.g. against a release manifest's sha256)."""
    from sknet.model import build_model
    from sknet.training.checkpoint import load_into

    network = build_model(cfg.model.name, cfg.model.num_classes, cfg.model.stem)
    load_into(network, checkpoint, what=f"{cfg.model.name} ({cfg.model.stem} stem, {cfg.model.num_classes} classes)",
              verified=verified)
    network.set_train(False)
    return network


def evaluate(cfg: Config, checkpoint: str, *, predictions_out: str | Path | None = None,
             verified: bool = False) -> dict:
    """The metrics of `checkpoint` (see `evaluate_forward`)."""
    check_on_this_host(cfg)  # before the checkpoint is loaded: MindSpore's own check is a bare ValueError
    configure(cfg.train.device_target, cfg.train.seed)
    network = load_network(cfg, checkpoint, verified=verified)
    return evaluate_forward(cfg, network, what=str(checkpoint), predictions_out=predictions_out)


def evaluate_forward(cfg: Config, forward: Callable, *, batch_size: int | None = None, what: str = "model",
                     predictions_out: str | Path | None = None) -> dict:
    """Score `forward` (a batch of images as a MindSpore tensor → logits, a tensor or an array) on the first
    `data.num_eval_samples` test images, in order, `batch_size` (default `train.batch_size`) at a time; a
    forward that takes a fixed batch gets the last, partial batch padded and its padded rows dropped.

    Returns {"top_1_accuracy", "top_5_accuracy", "loss", "samples", "synthetic_data", "per_class_accuracy"
    (one per class; NaN-free: a class without samples has None), "confusion_matrix" (rows: true class, columns:
    predicted; sums to `samples`), "calibration" ({"ece", "nll", "bins"}: `sknet.evaluation.calibration`)}.
    """
    from sknet.data.pipeline import build_dataset

    report = verify_layout(local_dataset_path(cfg.data.uri))
    batch = batch_size or cfg.train.batch_size
    dataset = build_dataset(
        report.path, train=False, batch_size=batch, image_size=cfg.data.image_size,
        num_samples=cfg.data.num_eval_samples, num_parallel_workers=cfg.data.num_parallel_workers,
        drop_remainder=False,
    )
    labels, logits = [], []
    for images, batch_labels in dataset.create_tuple_iterator(num_epochs=1):
        logits.append(_logits(forward, images, batch))
        labels.append(batch_labels.asnumpy())
    metrics = score(np.concatenate(logits), np.concatenate(labels), cfg.model.num_classes)
    metrics["synthetic_data"] = report.synthetic
    if predictions_out is not None:
        write_predictions(predictions_out, np.concatenate(labels), np.concatenate(logits).argmax(axis=1))
    log.info("evaluated %s on %d samples: top-1 %.4f, top-5 %.4f, loss %.4f",
             what, metrics["samples"], metrics["top_1_accuracy"], metrics["top_5_accuracy"], metrics["loss"])
    return metrics


def _logits(forward: Callable, images, batch: int) -> np.ndarray:
    """`forward(images)` as float64, padding a short batch to `batch` rows for a fixed-batch forward."""
    import mindspore as ms

    rows = images.shape[0]
    if rows < batch:
        padded = np.zeros((batch, *images.shape[1:]), dtype=images.asnumpy().dtype)
        padded[:rows] = images.asnumpy()
        images = ms.Tensor(padded)
    out = forward(images)
    out = out.asnumpy() if hasattr(out, "asnumpy") else np.asarray(out)
    return out[:rows].astype(np.float64)


def score(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy, per-class accuracy, confusion matrix, mean cross-entropy and calibration
    (`sknet.evaluation.calibration`) of `logits` for `labels`."""
    ranked = np.argsort(-logits, axis=1)
    samples = len(labels)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)
    per_class = confusion.sum(axis=1)
    return {
        "top_1_accuracy": int((ranked[:, 0] == labels).sum()) / samples,
        "top_5_accuracy": int((ranked[:, :5] == labels[:, None]).any(axis=1).sum()) / samples,
        "loss": float(cross_entropy(logits, labels).sum()) / samples,
        "samples": samples,
        "per_class_accuracy": [float(confusion[c, c] / n) if n else None for c, n in enumerate(per_class)],
        "confusion_matrix": confusion.tolist(),
        "calibration": calibration(logits, labels),  # ECE, NLL and the reliability bins
    }


HEADLINE = ("top_1_accuracy", "top_5_accuracy", "loss", "samples", "synthetic_data")


def headline(metrics: dict) -> dict:
    """The single-number metrics (a table row), without the per-class lists and the matrix."""
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def per_class_rows(metrics: dict) -> list[dict]:
    """One row per class: its name, samples, accuracy and how many of its samples went to each predicted class."""
    from sknet.data.layout import CLASS_NAMES

    rows = []
    for index, counts in enumerate(metrics["confusion_matrix"]):
        name = CLASS_NAMES[index] if index < len(CLASS_NAMES) else f"#{index}"
        accuracy = metrics["per_class_accuracy"][index]
        rows.append({"class": name, "samples": sum(counts),
                     "accuracy": accuracy if accuracy is None else round(accuracy, 4),  # people read it
                     **{f"→{CLASS_NAMES[j] if j < len(CLASS_NAMES) else j}": n for j, n in enumerate(counts)}})
    return rows


def write_predictions(path: str | Path, labels: np.ndarray, top_1: np.ndarray) -> Path:
    """Each sample's label and top-1 prediction, in the eval order (written whole: a reader never sees a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"labels": labels.tolist(), "top_1": top_1.tolist()}) + "\n")
    partial.replace(path)
    return path


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample softmax cross-entropy, computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]
