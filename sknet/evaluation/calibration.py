"""How far a model's confidence can be trusted: the expected calibration error over equal-width confidence bins
and the negative log-likelihood (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, §2).

A sample's confidence is the softmax probability of its top-1 class. Bin m of M holds the samples whose confidence
lies in ((m-1)/M, m/M] (the first bin includes 0); ECE = Σ_m |B_m| / n · |accuracy(B_m) − confidence(B_m)|. A
model right 90 % of the time that says 99 % is off by 0.09; one that says 90 % is calibrated.
"""

from __future__ import annotations

import numpy as np

BINS = 15  # Guo et al. use 15 equal-width bins


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def calibration(logits: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """{"ece", "nll", "bins": [{"lower", "upper", "count", "confidence", "accuracy"}]} of `logits` for `labels`;
    an empty bin's confidence and accuracy are None (JSON has no NaN)."""
    probs = softmax(logits.astype(np.float64))
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lower, upper]
    rows, ece = [], 0.0
    for m in range(bins):
        members = index == m
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        rows.append({"lower": round(m / bins, 6), "upper": round((m + 1) / bins, 6), "count": count,
                     "confidence": mean_confidence, "accuracy": accuracy})
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None)).mean())
    return {"ece": float(ece), "nll": nll, "bins": rows}
