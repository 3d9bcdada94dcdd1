"""The sknet-train flow under Prefect's test harness (a real temporary API), on synthetic data."""

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


def test_a_passing_run_releases_the_model_with_lineage(prefect_api, synthetic_data, tmp_path):
    from sknet.storage import LocalStore, sha256_file

    state = run_flow(tmp_path, synthetic_data, gate_threshold=0.3)
    assert state.is_completed(), state.message
    pointer = state.result()
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


def test_a_gate_miss_fails_the_run_keeps_its_outputs_and_releases_nothing(prefect_api, synthetic_data, tmp_path):
    from sknet.storage import LocalStore

    state = run_flow(tmp_path, synthetic_data, gate_threshold=0.999)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"gate failed: top_1_accuracy 0\.\d{4} < threshold 0\.9990"):
        state.result()
    store = LocalStore(tmp_path / "bucket")
    assert not store.exists("releases/sknet-tiny/LATEST")
    runs = [o.key for o in store.list("runs/") if o.key.endswith("eval.json")]
    assert len(runs) == 1
