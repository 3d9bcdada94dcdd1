"""The model card (MODEL_CARD.md) every release carries: its content, and its place in a published release."""

import json
import re

import pytest

from sknet.config import load_config
from sknet.plan import RunPlan
from sknet.release.lineage import lineage_record
from sknet.release.model_card import model_card
from sknet.run_outputs import release_model
from sknet.storage import read_manifest, sha256_file
from test_escaping_and_redaction import HOSTILE, check_rendered_as_text

S3_PREFIX = "cards"


def metrics_of(top_1: float, top_5: float = 0.99) -> dict:
    return {"top_1_accuracy": top_1, "top_5_accuracy": top_5, "loss": 0.25, "samples": 320, "synthetic_data": False}


def lineage_of(cfg, *, synthetic: bool, top_1: float = 0.93, dataset_uri: str = "s3://b/datasets/cifar10/d1g") -> dict:
    return lineage_record(
        cfg, run_id="v2", dataset_uri=dataset_uri, dataset_digest="d1g" + "0" * 61,
        synthetic_data=synthetic, metrics=metrics_of(top_1),
        artifacts={"model.mindir": {"sha256": "m" * 64, "input_shape": [1, 3, 32, 32], "dynamic_batch": False,
                                    "max_abs_diff": 1e-6, "parameters": 1_234_567},
                   "checkpoint.ckpt": {"step": 60, "sha256": "c" * 64}})


PREVIOUS = {"version": "v1", "metrics": {"top_1_accuracy": 0.92, "top_5_accuracy": 0.995},
            "released_at": "2026-11-27T01:00:00+00:00", "sequence": 1}


def test_a_synthetic_first_release_is_marked_synthetic_and_for_pipeline_tests_only():
    cfg = load_config("cpu-smoke")
    card = model_card(cfg, lineage_of(cfg, synthetic=True), release="sknet-tiny", version="v2", previous=None)
    title, warning = card.splitlines()[0], card.splitlines()[2]
    assert title == "# Model card: sknet-tiny v2 — SYNTHETIC data"
    assert warning.startswith("> **⚠ SYNTHETIC DATA — NOT A USABLE MODEL.**")
    assert "**None beyond testing this pipeline.**" in card and "CIFAR-10 classes" not in card
    assert "- first release of sknet-tiny: no previous release to compare with" in card
    assert "| metric | this release | gate |\n" in card and "change" not in card
    assert "**1,234,567 parameters**" in card and "trained on at most 640 training images" in card


def test_a_real_release_shows_recipe_gate_change_against_the_previous_release_and_lineage():
    cfg = load_config("cifar10-ascend8")
    lineage = lineage_of(cfg, synthetic=False)
    card = model_card(cfg, lineage, release="sknet50", version="v2", previous=PREVIOUS)
    assert "SYNTHETIC" not in card and card.startswith("# Model card: sknet50 v2\n")
    assert "| top-1 accuracy | **0.9300** | ≥ 0.9300 | 0.9200 | +0.0100 |" in card
    assert "| top-5 accuracy | **0.9900** | — | 0.9950 | -0.0050 |" in card
    assert "- gate: **PASS** — gate passed: top_1_accuracy 0.9300 ≥ threshold 0.9300" in card
    assert "compared with `v1`, the LATEST release of sknet50 before this one (released 2026-11-27" in card
    for row in ("| epochs | 90 |", "| batch size | 32 per rank × 8 ranks = 256 |",
                "| learning rate | warm-up 5 epochs from 0.01, then warmup_poly (power 2) from 0.1 to 0 |",
                "| optimizer | Momentum 0.9, weight decay 0.0001 (not on BN γ/β and biases) |",
                "| precision | amp O2, dynamic loss scale 1024 |", "| image size | 224×224 |",
                "| devices | 8 ranks on Ascend (ascend launch, 1 node) |"):
        assert row in card
    for digest in (cfg.digest(), "d1g" + "0" * 61, "c" * 64, "m" * 64, lineage["code"]["commit"]):
        assert f"`{digest}`" in card
    assert "into the 10 CIFAR-10 classes: airplane, automobile," in card and "not validated for other domains" in card


def test_with_compare_to_latest_the_card_shows_the_gate_against_the_previous_release():
    cfg = load_config("cifar10-ascend8", {"gate.compare_to_latest": True, "gate.margin": 0.005})
    card = model_card(cfg, lineage_of(cfg, synthetic=False), release="sknet50", version="v2", previous=PREVIOUS)
    assert "≥ current release 0.9200 + margin 0.0050" in card


def test_the_card_does_not_depend_on_when_it_is_written():
    cfg = load_config("cpu-smoke")
    lineage = lineage_of(cfg, synthetic=True)
    later = {**lineage, "created_at": "2099-01-01T00:00:00+00:00"}  # a retry's lineage record
    assert model_card(cfg, lineage, release="m", version="v2", previous=PREVIOUS) == \
        model_card(cfg, later, release="m", version="v2", previous=PREVIOUS)


def test_a_hostile_dataset_uri_latest_version_and_date_are_shown_as_text_never_rendered():
    """Issue 19 §1: backticks, a line break with a heading, an <img onerror>, links and table pipes in the dataset
    URI and in a crafted LATEST pointer's version and date."""
    cfg = load_config("cifar10-ascend8")

    def card(value: str) -> str:
        return model_card(cfg, lineage_of(cfg, synthetic=False, dataset_uri=value), release="sknet50", version="v2",
                          previous={**PREVIOUS, "version": value, "released_at": value})

    check_rendered_as_text(card(HOSTILE), card("s3://b/datasets/cifar10/d1g"), [HOSTILE])


def test_a_metric_that_is_not_finite_is_a_dash():
    cfg = load_config("cifar10-ascend8")
    lineage = lineage_of(cfg, synthetic=False)
    lineage["metrics"]["loss"] = float("nan")
    previous = {**PREVIOUS, "metrics": {"top_1_accuracy": 0.92, "top_5_accuracy": float("nan")}}
    card = model_card(cfg, lineage, release="sknet50", version="v2", previous=previous)
    assert "| top-5 accuracy | **0.9900** | — | — | — |" in card and "- loss — on 320 test images" in card
    assert not re.search(r"\b(nan|inf)\b", card, flags=re.IGNORECASE)


def release(store, request, tmp_path, version: str, top_1: float, synthetic: bool = True):
    """`release_model` on stand-in files (a model, a checkpoint, a config) of run `version` into `store`."""
    endpoint = {"storage.endpoint_url": request.getfixturevalue("s3_server").endpoint} \
        if store.uri.startswith("s3://") else {}
    cfg = load_config("cpu-smoke", {"storage.uri": store.uri, **endpoint})
    run_dir = tmp_path / version
    run_dir.mkdir(exist_ok=True)
    for name, body in (("model.mindir", f"mindir {version}"), ("step-60.ckpt", f"ckpt {version}"),
                       ("config.yaml", cfg.to_yaml())):
        (run_dir / name).write_text(body)
    plan = RunPlan(run_id=version, output_dir=str(run_dir), cache_dir=str(tmp_path / "cache"), store_uri=store.uri,
                   model="sknet-tiny")
    model = {"path": str(run_dir / "model.mindir"), "sha256": sha256_file(run_dir / "model.mindir"),
             "input_shape": [1, 3, 32, 32], "dynamic_batch": False, "max_abs_diff": 0.0, "parameters": 98_765}
    run = {"step": 60, "checkpoint": str(run_dir / "step-60.ckpt"),
           "checkpoint_sha256": sha256_file(run_dir / "step-60.ckpt")}
    dataset = {"uri": "file:///data/cifar10", "digest": "d" * 64, "synthetic": synthetic}
    return release_model(cfg, plan, dataset, run, metrics_of(top_1), model)


def test_a_release_carries_its_model_card_listed_in_the_manifest(store, request, tmp_path):
    pointer, _, card = release(store, request, tmp_path, "v1", 0.91)
    assert pointer["version"] == "v1"
    assert store.get_bytes("releases/sknet-tiny/v1/MODEL_CARD.md").decode() == card
    assert read_manifest(store, "releases/sknet-tiny/v1")["files"]["MODEL_CARD.md"]["sha256"] == \
        sha256_file(tmp_path / "v1" / "MODEL_CARD.md")
    assert "SYNTHETIC data" in card and "first release of sknet-tiny" in card and "**98,765 parameters**" in card


def test_the_next_release_card_compares_with_the_release_it_replaces(store, request, tmp_path):
    release(store, request, tmp_path, "v1", 0.91)
    _, _, card = release(store, request, tmp_path, "v2", 0.95, synthetic=False)
    assert "| top-1 accuracy | **0.9500** | ≥ 0.5000 | 0.9100 | +0.0400 |" in card
    assert "compared with `v1`, the LATEST release of sknet-tiny before this one" in card
    assert json.loads(store.get_bytes("releases/sknet-tiny/LATEST"))["version"] == "v2"


@pytest.mark.parametrize("latest_lost", [False, True])
def test_a_retried_release_succeeds_and_keeps_its_published_card(store, request, tmp_path, latest_lost):
    release(store, request, tmp_path, "v1", 0.91)
    _, _, card = release(store, request, tmp_path, "v2", 0.95)
    if latest_lost:  # as if the first attempt died before moving LATEST: the retry sees no release before it
        store.delete("releases/sknet-tiny/LATEST")
    pointer, _, again = release(store, request, tmp_path, "v2", 0.95)
    assert pointer["version"] == "v2" and again == card and "compared with `v1`" in again
    assert store.get_bytes("releases/sknet-tiny/v2/MODEL_CARD.md").decode() == card
