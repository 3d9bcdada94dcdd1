"""The accuracy gate: a pure function from metrics (and optionally the current release's) to a verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from sknet.errors import SknetError


class GateFailed(SknetError):
    """The model did not pass the gate; the message gives metric, value and threshold."""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    metric: str
    value: float
    threshold: float
    champion: float | None
    margin: float
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def gate(metrics: Mapping, *, metric: str, threshold: float,
         champion_metrics: Mapping | None = None, margin: float = 0.0) -> Verdict:
    """Pass when `metrics[metric] ≥ threshold` and, given a champion, `≥ champion + margin`."""
    value = _metric(metrics, metric, "the new model's metrics")
    champion = None if champion_metrics is None else _metric(champion_metrics, metric, "the current release")
    failures = []
    if value < threshold:
        failures.append(f"{metric} {value:.4f} < threshold {threshold:.4f}")
    if champion is not None and value < champion + margin:
        failures.append(f"{metric} {value:.4f} < current release {champion:.4f} + margin {margin:.4f}")
    if failures:
        message = "gate failed: " + "; ".join(failures)
    else:
        message = f"gate passed: {metric} {value:.4f} ≥ threshold {threshold:.4f}" + (
            f" and ≥ current release {champion:.4f} + margin {margin:.4f}" if champion is not None else "")
    return Verdict(not failures, metric, value, threshold, champion, margin, message)


def enforce(verdict: Verdict) -> Verdict:
    if not verdict.passed:
        raise GateFailed(verdict.message)
    return verdict


def _metric(metrics: Mapping, metric: str, whose: str) -> float:
    if metric not in metrics:
        raise GateFailed(f"{whose} have no {metric!r} (have: {', '.join(sorted(metrics))})")
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise GateFailed(f"{whose}: {metric}={value!r}, expected a fraction in [0, 1]")
    return float(value)
