"""Champion/challenger on the same samples: McNemar's exact test, the per-class rule, and the real thing — LATEST's
checkpoint fetched from a store and scored with MindSpore on this run's eval samples."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from sknet.config import load_config
from sknet.evaluation.evaluate import evaluate
from sknet.release import latest_release, publish_release
from sknet.release.champion import Paired, compare, mcnemar_exact, pair_with_latest, read_predictions
from sknet.release.gate import GateFailed, PairedRule, gate
from sknet.run_files import PREDICTIONS_FILE
from sknet.run_outputs import gate_against_latest
from sknet.storage import LocalStore

MODEL = "sknet-tiny"


@pytest.mark.parametrize("better,worse", [(10, 0), (0, 10), (7, 3), (60, 40), (500, 430), (3, 3), (0, 0)])
def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs(better, worse):
    expected = 1.0 if better + worse == 0 else binomtest(better, better + worse, 0.5).pvalue
    assert mcnemar_exact(better, worse) == pytest.approx(expected, rel=1e-9)


def test_a_few_thousand_discordant_pairs_do_not_underflow():
    assert mcnemar_exact(2600, 2400) == pytest.approx(binomtest(2600, 5000, 0.5).pvalue, rel=1e-6)


def paired(better: int, worse: int, drop: float = 0.0) -> Paired:
    return Paired(champion="v1", samples=1000, better=better, worse=worse, p_value=mcnemar_exact(better, worse),
                  worst_class=3, worst_class_drop=drop, champion_metrics={"top_1_accuracy": 0.90})


def judge(value: float, pair: Paired, **rule):
    return gate({"top_1_accuracy": value}, metric="top_1_accuracy", threshold=0.5, paired=pair,
                rule=PairedRule(**rule))


def test_a_higher_score_that_is_noise_does_not_pass_a_superiority_gate():
    verdict = judge(0.905, paired(better=30, worse=25))  # +0.5 points: a margin of 0 would pass it
    assert not verdict.passed
    assert "not significantly better than release v1" in verdict.message
    assert "p=0.59" in verdict.message and "30 right only by this model, 25 only by release v1" in verdict.message


def test_a_real_gain_passes_and_non_inferiority_forgives_noise_but_not_a_real_loss():
    assert judge(0.92, paired(better=40, worse=20)).passed  # p ≈ 0.013
    assert judge(0.895, paired(better=25, worse=30), mode="non_inferior").passed
    lost = judge(0.88, paired(better=20, worse=40), mode="non_inferior")
    assert not lost.passed and "significantly worse than release v1" in lost.message


def test_a_class_that_drops_too_far_fails_the_gate_by_name():
    verdict = judge(0.93, paired(better=60, worse=10, drop=0.08))
    assert not verdict.passed
    assert "class 3 (cat) changes by -0.0800, a drop beyond gate.max_class_drop 0.0500" in verdict.message
    assert judge(0.93, paired(better=60, worse=10, drop=0.08), max_class_drop=0.1).passed


def test_compare_counts_discordant_pairs_and_finds_the_worst_class():
    labels = np.array([0, 0, 1, 1, 2, 2])
    ours = np.array([0, 0, 1, 0, 0, 2])  # class 2: 1 of 2 right
    theirs = np.array([0, 1, 1, 1, 2, 2])  # class 2: 2 of 2
    result = compare((labels, ours), (labels, theirs), version="v1", num_classes=3, champion_metrics={})
    assert (result.better, result.worse) == (1, 2)
    assert (result.worst_class, result.worst_class_drop) == (1, 0.5)


# --- the real thing: a release's checkpoint scored on this run's samples ---------------------------------------

@pytest.fixture(scope="module")
def checkpoints(smoke_run) -> dict[int, Path]:
    found = sorted(Path(smoke_run["output_dir"], "checkpoints").glob("step-*.ckpt"))
    assert len(found) >= 2, found
    return {int(p.stem.split("-")[1]): p for p in found}


@pytest.fixture(scope="module")
def scored(synthetic_data, smoke_run, tmp_path_factory) -> tuple[dict, Path]:
    """The final checkpoint evaluated once for the module: its metrics and its predictions file."""
    predictions = tmp_path_factory.mktemp("scored") / PREDICTIONS_FILE
    cfg = load_config("cpu-smoke", {"data.uri": str(synthetic_data)})
    return evaluate(cfg, smoke_run["checkpoint"], predictions_out=predictions), predictions


@pytest.fixture
def setup(synthetic_data, scored, tmp_path):
    """A run directory with the final checkpoint's predictions, and a file store for releases."""
    run = tmp_path / "run"
    store_dir = tmp_path / "store"
    cfg = load_config("cpu-smoke", {"data.uri": str(synthetic_data), "train.output_dir": str(run),
                                    "storage.uri": f"file://{store_dir}", "gate.compare_to_latest": True,
                                    "gate.threshold": 0.0})
    metrics, predictions = scored
    run.mkdir()
    shutil.copy2(predictions, run / PREDICTIONS_FILE)
    return cfg, LocalStore(str(store_dir)), dict(metrics), run


def release(cfg, store, version: str, checkpoint: Path, tmp_path: Path, **config_changes) -> None:
    config = tmp_path / f"config-{version}.yaml"
    config.write_text(cfg.override(config_changes).to_yaml() if config_changes else cfg.to_yaml())
    publish_release(store, MODEL, version, {"checkpoint.ckpt": checkpoint, "config.yaml": config},
                    metadata={"metrics": {"top_1_accuracy": 0.0, "top_5_accuracy": 0.0}})


def message_of(cfg, metrics) -> str:
    """The gate's message, passed or failed."""
    try:
        return gate_against_latest(cfg, metrics, MODEL).message
    except GateFailed as failed:
        return str(failed)


def test_latest_is_scored_on_the_same_samples_and_compared_pair_by_pair(setup, checkpoints, tmp_path):
    cfg, store, metrics, run = setup
    earlier = min(checkpoints)
    release(cfg, store, "epoch2", checkpoints[earlier], tmp_path)
    pair = pair_with_latest(cfg, store, MODEL, latest_release(store, MODEL), run / PREDICTIONS_FILE, tmp_path / "c")

    their_metrics = evaluate(cfg, str(checkpoints[earlier]), predictions_out=tmp_path / "theirs.json")
    labels, ours = read_predictions(run / PREDICTIONS_FILE)
    _, theirs = read_predictions(tmp_path / "theirs.json")
    better = int(((ours == labels) & (theirs != labels)).sum())
    worse = int(((theirs == labels) & (ours != labels)).sum())
    assert better + worse > 0  # two epochs apart, the models disagree somewhere
    assert (pair.champion, pair.samples, pair.better, pair.worse) == ("epoch2", 320, better, worse)
    assert pair.champion_metrics["top_1_accuracy"] == their_metrics["top_1_accuracy"]  # not the stored 0.0
    assert pair.p_value == mcnemar_exact(better, worse)

    message = message_of(cfg, metrics)
    assert f"McNemar p={pair.p_value:.3g} on 320 samples: {better} right only by this model, {worse} only by " \
           "release epoch2" in message
    assert json.loads((run / "champion" / "predictions-epoch2.json").read_text())["labels"] == labels.tolist()


def test_the_same_model_is_not_better_but_is_not_worse(setup, tmp_path, smoke_run):
    cfg, store, metrics, _ = setup
    release(cfg, store, "same", Path(smoke_run["checkpoint"]), tmp_path)
    with pytest.raises(GateFailed, match=r"not significantly better than release same .*p=1 on 320 samples: 0 right"):
        gate_against_latest(cfg, metrics, MODEL)
    verdict = gate_against_latest(cfg.override({"gate.mode": "non_inferior"}), metrics, MODEL)
    assert verdict.passed and verdict.paired["p_value"] == 1.0 and verdict.paired["worst_class_drop"] == 0.0


def test_latest_of_another_model_falls_back_to_the_margin_and_says_why(setup, tmp_path, smoke_run):
    cfg, store, metrics, _ = setup
    release(cfg, store, "wide", Path(smoke_run["checkpoint"]), tmp_path, **{"data.image_size": 64})
    verdict = gate_against_latest(cfg, metrics, MODEL)  # the stored top-1 0.0 + margin 0 is beaten
    assert verdict.paired is None and verdict.champion == 0.0
    assert "release wide not scored on this run's samples: release wide is another model (data.image_size 64, " \
           "this run 32)" in verdict.message


def test_a_damaged_or_missing_champion_checkpoint_falls_back_to_the_margin(setup, tmp_path, smoke_run):
    cfg, store, metrics, run = setup
    release(cfg, store, "v1", Path(smoke_run["checkpoint"]), tmp_path)
    stored = store.root / "releases" / MODEL / "v1" / "checkpoint.ckpt"
    stored.write_bytes(stored.read_bytes()[:-16] + b"\0" * 16)
    verdict = gate_against_latest(cfg, metrics, MODEL)
    assert verdict.paired is None and "checkpoint.ckpt has sha256" in verdict.message
    stored.unlink()
    assert "checkpoint.ckpt is missing" in gate_against_latest(cfg, metrics, MODEL).message
    shutil.rmtree(run)  # this run's predictions are gone too (a retry on another machine)
    assert "per-sample predictions" in gate_against_latest(cfg, metrics, MODEL).message
