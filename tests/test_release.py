import json

import pytest

from sknet.config import load_config
from sknet.lineage import lineage_record
from sknet.release import latest_release, publish_release, publish_run
from sknet.storage import IncompleteError, sha256_file


@pytest.fixture
def artifacts(tmp_path):
    model, metrics = tmp_path / "model.mindir", tmp_path / "metrics.json"
    model.write_bytes(b"mindir" * 1000)
    metrics.write_text(json.dumps({"top_1_accuracy": 0.91}))
    return {"model.mindir": model, "metrics.json": metrics}


def test_first_release_moves_latest_and_is_readable(store, artifacts):
    assert latest_release(store, "sknet50") is None
    pointer = publish_release(store, "sknet50", "2026-11-28-001", artifacts, metadata={"metrics": {"top_1_accuracy": 0.91}})
    assert pointer["uri"] == f"{store.uri}/releases/sknet50/2026-11-28-001"
    current = latest_release(store, "sknet50")
    assert current["metrics"]["top_1_accuracy"] == 0.91
    assert current["files"]["model.mindir"]["sha256"] == sha256_file(artifacts["model.mindir"])


def test_a_release_version_is_immutable(store, artifacts):
    publish_release(store, "sknet50", "v1", artifacts)
    artifacts["model.mindir"].write_bytes(b"another model")
    with pytest.raises(IncompleteError, match="already released with other files; versions are immutable"):
        publish_release(store, "sknet50", "v1", artifacts)


def test_publishing_the_same_release_again_only_repoints_latest(store, artifacts, tmp_path):
    lineage = tmp_path / "lineage.json"
    lineage.write_text('{"created_at": "01:00"}')
    publish_release(store, "sknet50", "v1", {**artifacts, "lineage.json": lineage})
    store.delete("releases/sknet50/LATEST")  # as if the first attempt died right before moving it
    lineage.write_text('{"created_at": "01:20"}')  # a retried flow run writes a new lineage record
    pointer = publish_release(store, "sknet50", "v1", {**artifacts, "lineage.json": lineage})
    assert pointer["version"] == "v1"
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v1"
    assert json.loads(store.get_bytes("releases/sknet50/v1/lineage.json"))["created_at"] == "01:00"


def test_latest_moves_only_after_the_new_release_is_complete(store, artifacts, tmp_path):
    publish_release(store, "sknet50", "v1", artifacts)
    broken = dict(artifacts, **{"missing.bin": tmp_path / "does-not-exist.bin"})
    with pytest.raises(FileNotFoundError):
        publish_release(store, "sknet50", "v2", broken)
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v1"
    assert not store.exists("releases/sknet50/v2/manifest.json")


def test_run_outputs_are_published_under_the_run_id(store, artifacts):
    manifest = publish_run(store, "flow-run-123", artifacts)
    assert store.exists("runs/flow-run-123/manifest.json")
    assert set(manifest["files"]) == {"model.mindir", "metrics.json"}


def test_lineage_record_carries_digests_metrics_code_and_packages():
    cfg = load_config("cpu-smoke")
    record = lineage_record(cfg, run_id="r1", dataset_uri="s3://b/datasets/cifar10/abc", dataset_digest="abc",
                            synthetic_data=True, metrics={"top_1_accuracy": 0.9},
                            artifacts={"model.mindir": {"sha256": "f00"}})
    assert record["config"]["digest"] == cfg.digest()
    assert record["dataset"] == {"uri": "s3://b/datasets/cifar10/abc", "digest": "abc", "synthetic": True}
    assert record["code"]["packages"]["mindspore"].startswith("2.10")
    assert len(record["code"]["commit"].split("+")[0]) == 40
