"""The sknet-train flow under Prefect's test harness (a real temporary API): bad input fails fast and is not
retried. Full runs are tested where users run them: `make run` in test_readme.py (the flow in-process
on a temporary API) and the deployments through a real server and worker in test_e2e.py."""


import pytest
from prefect.states import Failed

from conftest import artifact_of
from sknet.launch.launcher import LaunchError, LaunchResult
from sknet.release.gate import GateFailed
from sknet.storage import IncompleteError, PermanentStorageError, StorageError
from tasks._support import transient_only


def failed_with(error: Exception):
    return Failed(data=error)


def launch_failure(failed_rank, diverged=False, bad_input=False):
    result = LaunchResult(backend="cpu", ranks=2, exit_codes={"0": 0, "1": -9}, seconds=30.0, output_dir="run",
                          checkpoint_dir="run/checkpoints", failed_rank=failed_rank, diverged=diverged,
                          bad_input=bad_input)
    return LaunchError("rank 1 exited with code -9", result)


@pytest.mark.parametrize("error, retried", [
    (launch_failure("1"), True),                              # a crashed rank: resume from the checkpoint
    (StorageError("get s3://b/k: SlowDown"), True),           # storage/network trouble
    (ConnectionError("reset by peer"), True),
    (launch_failure(None), False),                            # refused before start (e.g. too many ranks)
    (launch_failure("0", diverged=True), False),              # the same recipe would diverge again
    (launch_failure("0", bad_input=True), False),             # a rank refused its config or data (exit 2)
    (IncompleteError("no manifest.json"), False),             # will not complete by waiting
    (PermanentStorageError("manifest.json: not valid JSON"), False),  # a malformed object stays malformed
    (GateFailed("gate failed: top_1_accuracy 0.4 < threshold 0.9"), False),
    (ValueError("data.uri: no such directory"), False),
])
def test_only_transient_failures_are_retried(error, retried):
    assert transient_only(None, None, failed_with(error)) is retried


def test_a_rank_that_refuses_its_input_fails_the_launch_as_bad_input_and_is_not_retried(synthetic_data, tmp_path):
    """Issue 19 §4: more dataset workers than this host's CPUs (MindSpore's limit) is found by the rank, before it
    builds anything: it exits 2, and the launch result says bad input, which the train task does not retry."""
    import os

    from sknet.config import load_config
    from sknet.launch.launcher import launch

    workers = (os.cpu_count() or 1) + 1
    cfg = load_config("cpu-smoke", [f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}",
                                    f"data.num_parallel_workers={workers}"])
    refused = r"exited with code 2: bad input .*; a retry would fail the same way"
    with pytest.raises(LaunchError, match=refused) as error:
        launch(cfg, on_line=lambda line: None)
    result = error.value.result
    assert result.bad_input and not result.diverged
    assert any(f"data.num_parallel_workers={workers}: expected an integer in [1, {workers - 1}]" in line
               for line in result.last_lines)
    assert transient_only(None, None, failed_with(error.value)) is False


def allowing(directory) -> dict:
    """The override that lets a run train on a local layout outside its store (data.allowed_prefixes)."""
    return {"data.allowed_prefixes": [str(directory)]}


def task_runs_of(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))


@pytest.mark.slow
def test_an_invalid_threshold_fails_the_run_before_any_task(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_train import sknet_train

    state = sknet_train(config="cpu-smoke", dataset_uri=str(synthetic_data), gate_threshold=1.5,
                        publish_to=f"file://{tmp_path / 'bucket'}", work_dir=str(tmp_path / "work"),
                        return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"gate\.threshold: got 1\.5, expected a number in \[0, 1\]"):
        state.result()
    assert task_runs_of(state) == []
    assert not (tmp_path / "bucket").exists()


@pytest.mark.slow
def test_a_missing_dataset_fails_its_task_once_and_trains_nothing(prefect_api, tmp_path):
    from flows.sknet_train import sknet_train

    missing = tmp_path / "no-such-dataset"
    state = sknet_train(config="cpu-smoke", dataset_uri=str(missing), publish_to=f"file://{tmp_path / 'bucket'}",
                        overrides=allowing(tmp_path), work_dir=str(tmp_path / "work"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=str(missing)):
        state.result()
    (fetch,) = task_runs_of(state)
    assert fetch.name.startswith("fetch ") and fetch.run_count == 1  # bad input is never retried
    assert not (tmp_path / "work" / "runs").exists() or not any((tmp_path / "work" / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_a_diverging_run_fails_its_train_task_once_and_releases_nothing(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_train import sknet_train

    state = sknet_train(config="cpu-smoke", overrides={"train.base_lr": 1e9, **allowing(synthetic_data)},
                        dataset_uri=str(synthetic_data),
                        publish_to=f"file://{tmp_path / 'bucket'}", work_dir=str(tmp_path / "work"),
                        return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"rank 0 diverged"):
        state.result()
    runs = {run.name.split(" ")[0]: run for run in task_runs_of(state)}
    assert set(runs) == {"fetch", "train"} and runs["train"].run_count == 1  # never retried
    assert not (tmp_path / "bucket" / "releases").exists()


@pytest.mark.slow
def test_a_deployment_made_without_its_environment_names_the_variable(prefect_api, tmp_path):
    from flows.sknet_train import sknet_train

    state = sknet_train(config="cpu-smoke", dataset_uri="", publish_to=f"file://{tmp_path / 'bucket'}",
                        work_dir=str(tmp_path / "work"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"parameter dataset_uri is empty: the deployment was made without "
                                        r"SKNET_DATASET_URI set"):
        state.result()
    assert task_runs_of(state) == []
    state = sknet_train(config="cpu-smoke", work_dir="", return_state=True)  # SKNET_WORK_DIR unset at deploy time
    with pytest.raises(Exception, match=r"parameter work_dir is empty: .* without SKNET_WORK_DIR set"):
        state.result()


def flow_logs_and_summary(state) -> tuple[str, str]:
    """The flow run's log messages and its sknet-run-summary markdown."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    summary = next((a.data for a in artifacts if a.key == "sknet-run-summary"), "")
    return "\n".join(log.message for log in logs), summary


@pytest.mark.slow
def test_a_run_with_nothing_changed_trains_nothing_unless_forced(prefect_api, synthetic_data, tmp_path, monkeypatch):
    import base64
    import json
    import re
    import time

    import sknet.release.training_key
    from flows.sknet_train import sknet_train

    monkeypatch.setattr(sknet.release.training_key, "code_version", lambda: "git:fixed")  # others commit meanwhile
    bucket = tmp_path / "bucket"

    def smoke(gate_settings: dict | None = None, **parameters):
        started = time.perf_counter()
        state = sknet_train(config="cpu-smoke", overrides={"train.epochs": 1, "data.num_train_samples": 320,
                                                           **allowing(synthetic_data), **(gate_settings or {})},
                            dataset_uri=str(synthetic_data), gate_threshold=0.0, publish_to=f"file://{bucket}",
                            work_dir=str(tmp_path / "work"), return_state=True, **parameters)
        seconds = time.perf_counter() - started
        assert state.is_completed(), state
        return state, state.result(), {run.name.split(" ")[0] for run in task_runs_of(state)}, seconds

    first_state, first, first_tasks, first_seconds = smoke()
    version = first["release"]["version"]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # tagged for what it ran (issue #27 §17)
        assert {"cpu", "config:cpu-smoke"} <= set(client.read_flow_run(first_state.state_details.flow_run_id).tags)
    assert {"train", "evaluate", "export", "release"} <= first_tasks
    manifest = json.loads((bucket / "releases" / "sknet-tiny" / version / "manifest.json").read_text())
    assert len(manifest["training_key"]) == 64
    card = (bucket / "releases" / "sknet-tiny" / version / "MODEL_CARD.md").read_text()
    assert "MODEL_CARD.md" in manifest["files"] and artifact_of(first_state, "sknet-model-card") == card
    assert "SYNTHETIC data" in card and "first release of sknet-tiny" in card and " parameters** (trainable)" in card
    assert "## Per class" in card and "Confusion matrix (rows: true class" in card
    assert "## Calibration" in card and "Expected calibration error (15 equal-width confidence bins) **0." in card
    run_dir = tmp_path / "work" / "runs" / version
    figures = artifact_of(first_state, "sknet-curve")  # the PNGs themselves, which the UI shows
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", figures)
    shown = ("curve.png", "confusion.png", "reliability.png")
    assert [base64.b64decode(png) for png in embedded] == [(run_dir / name).read_bytes() for name in shown]
    manifest_page = artifact_of(first_state, "sknet-release-manifest")  # content a browser shows, not a file:// link
    assert f"Stored at `file://{bucket}/releases/sknet-tiny/{version}/manifest.json`" in manifest_page
    assert re.search(r"\| `model\.mindir` \| [\d,]+ bytes, sha256 `[0-9a-f]{16}`…", manifest_page)
    assert "exported model's top-1 / top-5 | 0." in artifact_of(first_state, "sknet-release-model")
    assert "| recipe digest | `" in artifact_of(first_state, "sknet-release-lineage")
    per_class = json.loads(artifact_of(first_state, "sknet-per-class"))
    assert [row["class"] for row in per_class][:2] == ["airplane", "automobile"]
    assert sum(row["samples"] for row in per_class) == first["metrics"]["samples"]
    assert [row["accuracy"] for row in per_class] == [round(a, 4) for a in first["metrics"]["per_class_accuracy"]]

    state, second, second_tasks, second_seconds = smoke()
    print(f"first run {first_seconds:.1f} s, unchanged run {second_seconds:.1f} s")
    assert second["unchanged_since"] == version and second["release"] is None
    assert second["metrics"] == first["metrics"] and second_tasks == {"fetch", "re-gate"}
    deadline = time.monotonic() + 30  # run logs reach the API in batches, shortly after the run ends
    while f"unchanged since release {version}" not in (logs := flow_logs_and_summary(state))[0]:
        assert time.monotonic() < deadline, logs
        time.sleep(1)
    assert f"unchanged since release {version}" in logs[1]  # (no timing assertion: the task set above says it)
    assert json.loads((bucket / "releases" / "sknet-tiny" / "LATEST").read_text())["sequence"] == 1

    stricter = first["metrics"]["top_1_accuracy"] + 0.001  # a gate-only change: the same key, judged again
    assert stricter <= 1.0
    state = sknet_train(config="cpu-smoke", overrides={"train.epochs": 1, "data.num_train_samples": 320,
                                                       **allowing(synthetic_data)},
                        dataset_uri=str(synthetic_data), gate_threshold=stricter, publish_to=f"file://{bucket}",
                        work_dir=str(tmp_path / "work"), return_state=True)
    assert state.is_failed()  # before: "unchanged since release …", a pass it never earned
    with pytest.raises(Exception, match=r"gate failed: top_1_accuracy .* < threshold"):
        state.result()
    assert {run.name.split(" ")[0] for run in task_runs_of(state)} == {"fetch", "re-gate"}  # nothing retrained

    # the same training again, judged against LATEST sample by sample: the same predictions, not worse
    forced_state, forced, forced_tasks, _ = smoke({"gate.compare_to_latest": True, "gate.mode": "non_inferior"},
                                                  force=True)
    assert "unchanged_since" not in forced and {"train", "evaluate", "export", "release"} <= forced_tasks
    assert forced["release"]["version"] != version
    gate_run = next(run for run in task_runs_of(forced_state) if run.name.startswith("gate"))
    print(f"paired gate: {(gate_run.end_time - gate_run.start_time).total_seconds():.1f} s")
    manifest = json.loads((bucket / "releases" / "sknet-tiny" / forced["release"]["version"] /
                           "manifest.json").read_text())
    paired = manifest["gate"]["paired"]
    assert paired["champion"] == version and paired["samples"] == first["metrics"]["samples"]
    assert "not significantly worse than release" in manifest["gate"]["message"]


@pytest.mark.slow
def test_the_ascend_profile_on_a_host_without_npus_fails_at_preflight_before_fetching_data(prefect_api, synthetic_data,
                                                                                         tmp_path):
    from flows.sknet_train import sknet_train

    state = sknet_train(config="cifar10-ascend8", dataset_uri=str(synthetic_data), overrides=allowing(synthetic_data),
                        publish_to=f"file://{tmp_path / 'bucket'}", work_dir=str(tmp_path / "work"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"preflight failed on this host: .*launch-plan: the launch plan is refused: "
                                        r"launch.backend=ascend needs launch.rank_table"):
        state.result()
    assert [run.name for run in task_runs_of(state)] == ["preflight this Ascend host"]  # nothing fetched or run
