"""The sknet-train flow under Prefect's test harness (a real temporary API), on synthetic data and a file://
store. The gate miss, the killed rank and the deployment itself are tested end to end in test_e2e.py."""

import json
import os

import pytest

pytestmark = pytest.mark.slow

SMOKE = {"data.num_train_samples": 320, "data.num_eval_samples": 320, "train.epochs": 3}


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_flow(tmp_path, data, **params):
    from flows.sknet_train import sknet_train

    return sknet_train(config="cpu-smoke", overrides=SMOKE, dataset_uri=str(data),
                       publish_to=f"file://{tmp_path / 'bucket'}", work_dir=str(tmp_path / "work"),
                       return_state=True, **params)


def artifacts_of(state) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return {a.key: a for a in found}


def test_a_passing_run_releases_the_model_with_lineage(prefect_api, synthetic_data, tmp_path):
    from sknet.checkpoint import CheckpointMirror
    from sknet.storage import LocalStore, sha256_file

    state = run_flow(tmp_path, synthetic_data, gate_threshold=0.3)
    assert state.is_completed(), state.message
    pointer = state.result()["release"]
    store = LocalStore(tmp_path / "bucket")
    latest = json.loads(store.get_bytes("releases/sknet-tiny/LATEST"))
    assert latest["version"] == pointer["version"]
    prefix = f"releases/sknet-tiny/{latest['version']}"
    manifest = json.loads(store.get_bytes(f"{prefix}/manifest.json"))
    assert {"model.mindir", "checkpoint.ckpt", "config.yaml", "lineage.json"} <= set(manifest["files"])
    lineage = json.loads(store.get_bytes(f"{prefix}/lineage.json"))
    assert lineage["artifacts"]["model.mindir"]["sha256"] == sha256_file(tmp_path / "bucket" / prefix / "model.mindir")
    assert lineage["dataset"]["synthetic"] is True
    assert store.exists(f"runs/{latest['version']}/manifest.json")
    assert store.exists(f"runs/{latest['version']}/curve.png")
    mirrored = CheckpointMirror(LocalStore(tmp_path / "bucket" / "runs" / latest["version"] / "checkpoints"))
    assert mirrored.steps()[-1] == lineage["artifacts"]["checkpoint.ckpt"]["step"] == 30
    artifacts = artifacts_of(state)
    assert {"sknet-run-summary", "sknet-metrics", "sknet-epochs", "sknet-training-progress", "sknet-curve",
            "sknet-release-model", "sknet-release-lineage"} <= set(artifacts)
    assert float(artifacts["sknet-training-progress"].data) == 100
    assert "SYNTHETIC data" in artifacts["sknet-run-summary"].data and "PASS" in artifacts["sknet-run-summary"].data
    assert [row["epoch"] for row in json.loads(artifacts["sknet-epochs"].data)] == [1, 2, 3]
    assert set(state.result()["stage_seconds"]) == {"data", "train", "evaluate", "publish-run", "export", "release"}
