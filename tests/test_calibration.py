"""Calibration (issue #29 §1): the expected calibration error over 15 equal-width confidence bins and the NLL,
in eval.json, the reliability diagram, the model card, and gate.max_ece / gate.max_ece_increase."""

import json
import math

import numpy as np
import pytest

from conftest import run_json
from sknet.config import load_config
from sknet.evaluation.calibration import calibration, softmax
from sknet.release.gate import GatePolicy


def logits_for(confidence: float, samples: int, classes: int = 10) -> np.ndarray:
    """Logits whose top-1 softmax probability is `confidence` (class 0), the rest spread evenly."""
    rest = (1 - confidence) / (classes - 1)
    return np.log(np.array([[confidence] + [rest] * (classes - 1)] * samples))


def test_a_model_right_as_often_as_it_is_sure_has_no_calibration_error():
    logits, labels = logits_for(0.78, 100), np.array([0] * 78 + [1] * 22)  # 78 % sure, 78 % right
    result = calibration(logits, labels)
    assert result["ece"] == pytest.approx(0.0, abs=1e-9)
    [full] = [b for b in result["bins"] if b["count"]]  # the bin (11/15, 12/15]
    assert (full["lower"], full["count"], full["accuracy"]) == (pytest.approx(11 / 15), 100, 0.78)


def test_an_overconfident_model_is_off_by_its_gap_weighted_by_its_share_of_samples():
    sure = logits_for(0.99, 50)  # 99 % sure, half right: gap 0.49
    honest = logits_for(0.6, 50)  # 60 % sure, 60 % right: gap 0
    labels = np.array([0] * 25 + [1] * 25 + [0] * 30 + [1] * 20)
    result = calibration(np.concatenate([sure, honest]), labels)
    assert result["ece"] == pytest.approx(0.5 * 0.49, abs=1e-9)
    probs = softmax(np.concatenate([sure, honest]))
    assert result["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(100), labels])))
    assert sum(b["count"] for b in result["bins"]) == 100 and len(result["bins"]) == 15
    assert all(b["confidence"] is None and b["accuracy"] is None for b in result["bins"] if not b["count"])


def test_the_gate_refuses_an_ece_above_its_bound_and_a_rise_over_the_champions():
    policy = GatePolicy.of(load_config("cpu-smoke", ["gate.max_ece=0.05", "gate.max_ece_increase=0.01"]).gate)
    passed = policy.judge({"top_1_accuracy": 0.9, "calibration": {"ece": 0.03}},
                          champion_metrics={"top_1_accuracy": 0.8, "calibration": {"ece": 0.025}})
    assert passed.passed and "ECE 0.0300 ≤ gate.max_ece 0.0500" in passed.message
    too_far = policy.judge({"top_1_accuracy": 0.9, "calibration": {"ece": 0.08}})
    assert not too_far.passed and "ECE 0.0800 > gate.max_ece 0.0500" in too_far.message
    worse = policy.judge({"top_1_accuracy": 0.9, "calibration": {"ece": 0.04}},
                         champion_metrics={"top_1_accuracy": 0.8, "calibration": {"ece": 0.02}})
    assert not worse.passed and "more than the current release's 0.0200 + gate.max_ece_increase" in worse.message
    unknown = policy.judge({"top_1_accuracy": 0.9})
    assert not unknown.passed and "no calibration recorded" in unknown.message
    off = GatePolicy.of(load_config("cpu-smoke").gate).judge({"top_1_accuracy": 0.9})
    assert off.passed  # off by default


def test_the_smoke_models_evaluation_records_its_calibration(smoke_run, synthetic_data, tmp_path):
    """Real MindSpore: `sknet eval` of the smoke run's checkpoint writes ECE, NLL and 15 bins into its metrics."""
    from sknet.evaluation.figures import plot_reliability

    metrics = run_json("-q", "eval", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                       "--checkpoint", smoke_run["checkpoint"])
    cal = metrics["calibration"]
    assert 0.0 <= cal["ece"] <= 1.0 and math.isclose(cal["nll"], metrics["loss"], rel_tol=1e-6)
    assert sum(b["count"] for b in cal["bins"]) == metrics["samples"] and len(cal["bins"]) == 15
    print(f"smoke model: ECE {cal['ece']:.4f}, NLL {cal['nll']:.4f}, top-1 {metrics['top_1_accuracy']:.4f}")
    png = plot_reliability(metrics, tmp_path / "reliability.png", title="smoke")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(metrics, allow_nan=False)  # JSON has no NaN: an empty bin is None
