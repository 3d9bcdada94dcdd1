"""The training key (issue #18 §2): one rule — everything that changes a release's files or measured metrics,
and nothing else — applied to settings, evaluation, export, packages and code."""

import pytest

import sknet.release.training_key as tk
from sknet.config import load_config

DIGEST = "d" * 64


@pytest.fixture
def key():
    return tk.training_key(load_config("cpu-smoke"), DIGEST)


@pytest.mark.parametrize("override", [
    {"launch.ranks": 2},  # the global batch doubles, the steps halve
    {"data.num_eval_samples": 640},  # the metrics are measured on other samples
    {"export.dynamic_batch": True}, {"export.batch_size": 8},  # another MINDIR
    {"train.epochs": 7}, {"train.seed": 123}, {"model.stem": "imagenet", "data.image_size": 64},
])
def test_what_changes_the_files_or_their_metrics_changes_the_key(key, override):
    assert tk.training_key(load_config("cpu-smoke").override(override), DIGEST) != key


@pytest.mark.parametrize("override", [
    {"gate.threshold": 0.99}, {"gate.compare_to_latest": True},  # re-gated, not retrained
    {"storage.uri": "s3://elsewhere/sknet"}, {"data.uri": "/other/copy/of/the/same/data"},
    {"train.log_every_steps": 1}, {"train.checkpoint_every_steps": 1}, {"launch.backend": "msrun"},
])
def test_what_changes_neither_leaves_the_key(key, override):
    assert tk.training_key(load_config("cpu-smoke").override(override), DIGEST) == key


def test_another_dataset_or_package_version_changes_the_key(key, monkeypatch):
    assert tk.training_key(load_config("cpu-smoke"), "e" * 64) != key
    monkeypatch.setattr(tk, "package_versions", lambda names: {"mindspore": "2.10.1", "numpy": "1.26.4"})
    assert tk.training_key(load_config("cpu-smoke"), DIGEST) != key


def test_the_code_is_every_module_on_disk_tracked_or_not(tmp_path):
    package = tmp_path / "sknet"
    (package / "training").mkdir(parents=True)
    (package / "model.py").write_text("WIDTH = 64\n")
    before = tk.code_version(package)
    (package / "training" / "new_layer.py").write_text("SCALE = 2\n")  # a new module git does not track yet
    added = tk.code_version(package)
    (package / "README.md").write_text("docs change nothing\n")
    assert before != added == tk.code_version(package)
    (package / "training" / "new_layer.py").write_text("SCALE = 3\n")
    assert tk.code_version(package) != added


def test_the_real_code_version_digests_this_checkout():
    assert tk.code_version().startswith("sknet-src:") and len(tk.code_version()) == len("sknet-src:") + 64


def test_a_release_with_a_file_gone_is_not_one_a_run_can_skip_on(store, tmp_path):
    from sknet.release import publish_release, release_prefix
    from sknet.storage import join

    model = tmp_path / "model.mindir"
    model.write_bytes(b"weights")
    publish_release(store, "sknet50", "v1", {"model.mindir": model},
                    {"metrics": {"top_1_accuracy": 0.9}, "training_key": "k1"})
    assert tk.release_with_key(store, "sknet50", "k1")["version"] == "v1"
    store.delete(join(release_prefix("sknet50", "v1"), "model.mindir"))
    assert tk.release_with_key(store, "sknet50", "k1") is None  # before: "unchanged", with no model to ship
