"""Top-1 / top-5 accuracy and mean cross-entropy of a checkpoint on the CIFAR-10 test split."""

from __future__ import annotations

import logging

import numpy as np

from sknet.config import Config
from sknet.data.layout import local_dataset_path, verify_layout
from sknet.training.runtime import configure

log = logging.getLogger(__name__)


def load_network(cfg: Config, checkpoint: str):
    """The configured network with the checkpoint's parameters, in inference mode."""
    from sknet.training.checkpoint import load_into
    from sknet.model import build_model

    network = build_model(cfg.model.name, cfg.model.num_classes, cfg.model.stem)
    load_into(network, checkpoint, what=f"{cfg.model.name} ({cfg.model.stem} stem, {cfg.model.num_classes} classes)")
    network.set_train(False)
    return network


def evaluate(cfg: Config, checkpoint: str) -> dict:
    """Returns {"top_1_accuracy", "top_5_accuracy", "loss", "samples", "synthetic_data"}."""
    from sknet.data.pipeline import build_dataset

    report = verify_layout(local_dataset_path(cfg.data.uri))
    configure(cfg.train.device_target, cfg.train.seed)
    network = load_network(cfg, checkpoint)
    dataset = build_dataset(
        report.path, train=False, batch_size=cfg.train.batch_size, image_size=cfg.data.image_size,
        num_samples=cfg.data.num_eval_samples, num_parallel_workers=cfg.data.num_parallel_workers,
    )
    top1 = top5 = samples = 0
    loss_sum = 0.0
    for images, labels in dataset.create_tuple_iterator(num_epochs=1):
        logits = network(images).asnumpy().astype(np.float64)
        labels = labels.asnumpy()
        loss_sum += float(cross_entropy(logits, labels).sum())
        ranked = np.argsort(-logits, axis=1)
        top1 += int((ranked[:, 0] == labels).sum())
        top5 += int((ranked[:, :5] == labels[:, None]).any(axis=1).sum())
        samples += len(labels)
    metrics = {
        "top_1_accuracy": top1 / samples,
        "top_5_accuracy": top5 / samples,
        "loss": loss_sum / samples,
        "samples": samples,
        "synthetic_data": report.synthetic,
    }
    log.info("evaluated %s on %d samples: top-1 %.4f, top-5 %.4f, loss %.4f",
             checkpoint, samples, metrics["top_1_accuracy"], metrics["top_5_accuracy"], metrics["loss"])
    return metrics


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample softmax cross-entropy, computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]
