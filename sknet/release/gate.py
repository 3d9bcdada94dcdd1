"""The accuracy gate: a pure function from metrics (and optionally the current release's) to a verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from sknet.data.layout import CLASS_NAMES
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
    # `sknet.release.champion.Paired.to_dict()` when the release was compared sample by sample
    paired: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedRule:
    """How a paired comparison decides (gate.mode, gate.significance, gate.max_class_drop)."""

    mode: str = "superior"  # or "non_inferior"
    significance: float = 0.05
    max_class_drop: float = 0.05


@dataclass(frozen=True)
class CalibrationRule:
    """gate.max_ece (this model's expected calibration error) and gate.max_ece_increase (over the champion's, when
    there is one that records its own); None: not judged."""

    max_ece: float | None = None
    max_increase: float | None = None

    def judge(self, metrics: Mapping, champion_metrics: Mapping | None, failures: list[str], passes: list[str]):
        if self.max_ece is None and self.max_increase is None:
            return
        ece = _ece(metrics)
        if ece is None:
            failures.append("no calibration recorded (eval.json has no calibration.ece) for gate.max_ece / "
                            "gate.max_ece_increase")
            return
        if self.max_ece is not None:
            (passes if ece <= self.max_ece else failures).append(
                f"ECE {ece:.4f} {'≤' if ece <= self.max_ece else '>'} gate.max_ece {self.max_ece:.4f}")
        champion = _ece(champion_metrics) if champion_metrics else None
        if self.max_increase is not None and champion is not None:
            worse = ece - champion > self.max_increase
            (failures if worse else passes).append(
                f"ECE {ece:.4f} {'more' if worse else 'no more'} than the current release's {champion:.4f} + "
                f"gate.max_ece_increase {self.max_increase:.4f}")


def _ece(metrics: Mapping | None) -> float | None:
    ece = ((metrics or {}).get("calibration") or {}).get("ece")
    return float(ece) if isinstance(ece, (int, float)) and not isinstance(ece, bool) else None


@dataclass(frozen=True)
class GatePolicy:
    """The gate a config asks for (`gate.*`), built in one place (`of`) and applied by `judge`."""

    metric: str
    threshold: float
    margin: float = 0.0
    compare_to_latest: bool = False
    rule: PairedRule = PairedRule()
    calibration: CalibrationRule = field(default_factory=lambda: CalibrationRule())

    @classmethod
    def of(cls, config) -> GatePolicy:
        """The policy of a `GateConfig` (`cfg.gate`)."""
        return cls(config.metric, config.threshold, config.margin, config.compare_to_latest,
                   PairedRule(config.mode, config.significance, config.max_class_drop),
                   CalibrationRule(config.max_ece, config.max_ece_increase))

    def judge(self, metrics: Mapping, *, champion_metrics: Mapping | None = None, paired=None,
              fallback: str = "") -> Verdict:
        return gate(metrics, metric=self.metric, threshold=self.threshold, champion_metrics=champion_metrics,
                    margin=self.margin, paired=paired, rule=self.rule, fallback=fallback,
                    calibration=self.calibration)


def gate(metrics: Mapping, *, metric: str, threshold: float, champion_metrics: Mapping | None = None,
         margin: float = 0.0, paired=None, rule: PairedRule = PairedRule(), fallback: str = "",
         calibration: CalibrationRule | None = None) -> Verdict:
    """Pass when `metrics[metric] ≥ threshold` and, given a champion, beat it: by `paired` comparison on the same
    samples when there is one (`sknet.release.champion.Paired`, judged by `rule`), else by `metric ≥ champion + margin`
    (`fallback`: why the comparison was not paired, said in the message)."""
    value = _metric(metrics, metric, "the new model's metrics")
    if paired is not None:
        champion_metrics = paired.champion_metrics
    champion = None if champion_metrics is None else _metric(champion_metrics, metric, "the current release")
    failures, passes = [], [f"{metric} {value:.4f} ≥ threshold {threshold:.4f}"]
    if value < threshold:
        failures.append(f"{metric} {value:.4f} < threshold {threshold:.4f}")
    if paired is not None:
        _judge_paired(paired, rule, failures, passes)
    elif champion is not None:
        margin_text = f"current release {champion:.4f} + margin {margin:.4f}" + (f" ({fallback})" if fallback else "")
        if value < champion + margin:
            failures.append(f"{metric} {value:.4f} < {margin_text}")
        else:
            passes.append(f"≥ {margin_text}")
    if calibration is not None:
        calibration.judge(metrics, champion_metrics, failures, passes)
    if failures:
        message = "gate failed: " + "; ".join(failures)
        if paired is not None and len(passes) > 1:  # the paired evidence is named whichever rule failed
            message += " (while " + " and ".join(passes[1:]) + ")"
    else:
        message = "gate passed: " + " and ".join(passes)
    return Verdict(not failures, metric, value, threshold, champion, margin, message,
                   paired.to_dict() if paired is not None else None)


def _judge_paired(paired, rule: PairedRule, failures: list[str], passes: list[str]) -> None:
    """The paired rule's failures and passes, each naming the p-value, the discordant counts or the worst class."""
    evidence = (f"McNemar p={paired.p_value:.3g} on {paired.samples} samples: {paired.better} right only by this "
                f"model, {paired.worse} only by release {paired.champion}")
    significant = paired.p_value < rule.significance
    if rule.mode == "non_inferior":
        worse = significant and paired.worse > paired.better
        (failures if worse else passes).append(
            f"{'significantly worse than' if worse else 'not significantly worse than'} release {paired.champion} "
            f"at significance {rule.significance:g} ({evidence})")
    else:
        better = significant and paired.better > paired.worse
        (passes if better else failures).append(
            f"{'significantly better than' if better else 'not significantly better than'} release "
            f"{paired.champion} at significance {rule.significance:g} ({evidence})")
    name = f"class {paired.worst_class} ({_class_name(paired.worst_class)})"
    drop = f"{name} changes by {0.0 - paired.worst_class_drop:+.4f}"
    if paired.worst_class_drop > rule.max_class_drop:
        failures.append(f"{drop}, a drop beyond gate.max_class_drop {rule.max_class_drop:.4f}")
    else:
        passes.append(f"no class drops more than {rule.max_class_drop:.4f} (worst: {drop})")


def _class_name(index: int) -> str:
    return CLASS_NAMES[index] if 0 <= index < len(CLASS_NAMES) else f"#{index}"


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
