import json

import pytest

from conftest import run_sknet
from sknet.release.gate import GateFailed, enforce, gate


def test_passes_at_or_above_the_threshold():
    verdict = gate({"top_1_accuracy": 0.9}, metric="top_1_accuracy", threshold=0.9)
    assert verdict.passed and verdict.message == "gate passed: top_1_accuracy 0.9000 ≥ threshold 0.9000"


def test_fails_below_the_threshold_naming_metric_value_and_threshold():
    verdict = gate({"top_1_accuracy": 0.81234}, metric="top_1_accuracy", threshold=0.93)
    assert not verdict.passed
    assert verdict.message == "gate failed: top_1_accuracy 0.8123 < threshold 0.9300"
    with pytest.raises(GateFailed, match="top_1_accuracy 0.8123 < threshold 0.9300"):
        enforce(verdict)


def test_challenger_must_beat_the_champion_by_the_margin():
    champion = {"top_1_accuracy": 0.95}
    assert not gate({"top_1_accuracy": 0.955}, metric="top_1_accuracy", threshold=0.9,
                    champion_metrics=champion, margin=0.01).passed
    verdict = gate({"top_1_accuracy": 0.961}, metric="top_1_accuracy", threshold=0.9,
                   champion_metrics=champion, margin=0.01)
    assert verdict.passed and verdict.champion == 0.95


def test_missing_or_malformed_metric_is_an_error():
    with pytest.raises(GateFailed, match=r"have no 'top_5_accuracy' \(have: loss, top_1_accuracy\)"):
        gate({"top_1_accuracy": 0.9, "loss": 0.3}, metric="top_5_accuracy", threshold=0.5)
    with pytest.raises(GateFailed, match=r"top_1_accuracy=94.5, expected a fraction in \[0, 1\]"):
        gate({"top_1_accuracy": 94.5}, metric="top_1_accuracy", threshold=0.9)


def test_cli_gate_exits_1_on_a_miss_and_0_on_a_pass(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"top_1_accuracy": 0.6, "top_5_accuracy": 0.9}))
    miss = run_sknet("gate", "--config", "cpu-smoke", "--set", "gate.threshold=0.7", "--metrics", str(metrics),
                     check=False)
    assert miss.returncode == 1 and "top_1_accuracy 0.6000 < threshold 0.7000" in miss.stderr
    hit = run_sknet("gate", "--config", "cpu-smoke", "--metrics", str(metrics))
    assert json.loads(hit.stdout)["passed"] is True
