"""Input from a bucket, a flag or a parameter that is shaped wrong is refused with a clear error naming it, never a
traceback (issue #27 §4, §8, §9, §10)."""

import json

import pytest

from conftest import sknet_main
from sknet.config import load_config
from sknet.errors import ConfigError
from sknet.storage import LocalStore
from sknet.training.checkpoint import CheckpointMirror, checkpoint_path, latest_checkpoint, write_record
from sknet.training.run_record import RUN_RECORD_FILE, check_run_dir


@pytest.mark.parametrize("moment", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30+05:00"])
def test_a_time_outside_the_representable_years_in_utc_is_a_clear_error(moment, tmp_path, capsys):
    from sknet.release.history import parse_time

    with pytest.raises(ConfigError, match="in UTC this is outside the years 1 to 9999"):
        parse_time(moment)
    code, _, err = sknet_main(capsys, "release", "ls", "--store", str(tmp_path), "--model", "sknet50", "--at", moment)
    assert code == 2 and "outside the years 1 to 9999" in err


def mirrored_run(tmp_path, run_json: bytes | None = None, record: bytes | None = None):
    """A local run (its run.json) and a mirror holding step 40, with `run_json` / `record` as the mirror's objects."""
    cfg = load_config("cpu-smoke", [f"train.output_dir={tmp_path / 'run'}"])
    (tmp_path / "run").mkdir()
    check_run_dir(cfg, tmp_path / "run", "d" * 64)
    store = LocalStore(tmp_path / "bucket")
    source = checkpoint_path(tmp_path / "src", 40)
    source.parent.mkdir(parents=True)
    source.write_bytes(b"weights of step 40")
    write_record(source, 40)
    store.put(source, source.name)
    store.put_bytes(record if record is not None else (source.parent / f"{source.name}.sha256").read_bytes(),
                    f"{source.name}.sha256")
    store.put_bytes(run_json if run_json is not None else (tmp_path / "run" / RUN_RECORD_FILE).read_bytes(),
                    RUN_RECORD_FILE)
    return CheckpointMirror(store), store


@pytest.mark.parametrize("run_json", [b"[]", b'{"settings": "x"}', b'{"settings": {}, "dataset_digest": 7}',
                                      b"\xff\xfe"])
def test_a_mirrors_run_record_of_the_wrong_shape_is_refused_naming_the_object(tmp_path, run_json):
    mirror, store = mirrored_run(tmp_path, run_json=run_json)
    with pytest.raises(ConfigError, match=rf"{store.uri}/run.json: not a run record"):
        mirror.pull(tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run") is None


@pytest.mark.parametrize("record", [b'{"bytes": "many"}', b"[40]", b'{"step": 40, "bytes": 18, "sha256": "x"}'])
def test_a_mirrored_checkpoint_record_of_the_wrong_shape_is_not_used(tmp_path, caplog, record):
    mirror, store = mirrored_run(tmp_path, record=record)
    assert mirror.pull(tmp_path / "run") is None  # nothing newer that verifies: the run starts from scratch
    assert f"mirrored checkpoint of step 40 in {store.uri} not used: checkpoint record" in caplog.text
    assert "is not one" in caplog.text and latest_checkpoint(tmp_path / "run") is None


@pytest.mark.parametrize("length, refused", [(128, False), (129, True), (300, True)])
def test_a_run_id_longer_than_a_file_name_can_carry_is_refused_by_the_plan(tmp_path, length, refused):
    from sknet.plan import plan_run

    run = "r" * length
    if refused:
        with pytest.raises(ConfigError, match="at most 128 characters"):
            plan_run("cpu-smoke", None, run_id=run, work_dir=tmp_path / "work", publish_to=f"file://{tmp_path}/s")
    else:
        assert plan_run("cpu-smoke", None, run_id=run, work_dir=tmp_path / "work",
                        publish_to=f"file://{tmp_path}/s")[1].run_id == run


def test_the_dataset_worker_count_is_part_of_the_run_and_the_training_key():
    """MindSpore's random augmentations draw per worker: 1 and 2 workers trained other weights under one key."""
    from sknet.release.training_key import training_key
    from sknet.training.run_record import training_settings

    one, two = (load_config("cpu-smoke", [f"data.num_parallel_workers={n}"]) for n in (1, 2))
    assert training_settings(one)["data.num_parallel_workers"] == 1
    assert training_key(one, "d" * 64) != training_key(two, "d" * 64)


def test_an_msrun_retry_is_followed_from_its_own_first_line(tmp_path):
    """Issue #27 §6: a retry's follower replayed attempt 1's worker log and never saw attempt 2's lines (msrun
    opens worker_N.log with "w"), so a progressing retry was killed as stalled."""
    import time

    from sknet.launch.processes import LogTail, retire_worker_logs

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker_0.log").write_text("attempt 1: epoch 1/1 step 40/40\n")
    assert [p.relative_to(logs).as_posix() for p in retire_worker_logs(logs)] == ["attempt-1/worker_0.log"]
    seen: list[str] = []
    tail = LogTail(logs / "worker_0.log", "[rank 0] ", seen.append)
    with open(logs / "worker_0.log", "w") as log:  # attempt 2, as msrun writes it
        log.write("attempt 2: line 1\nattempt 2: line 2 with more words than the next\n")
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(logs / "worker_0.log", "w") as log:  # truncated under the follower: read from its start again
        log.write("attempt 3: x\n")
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tail.close()
    assert seen == ["[rank 0] attempt 2: line 1", "[rank 0] attempt 2: line 2 with more words than the next",
                    "[rank 0] attempt 3: x"]
    assert (logs / "attempt-1" / "worker_0.log").read_text().startswith("attempt 1")


def tool(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_tool_printing_bytes_that_are_not_utf8_is_read_with_replacement(tmp_path):
    from sknet.preflight.npu_smi import parse_npu_smi_info
    from sknet.preflight.runner import Failed
    from sknet.preflight.tools import tool_output

    text = tool_output(tool(tmp_path, "npu-smi", r"printf '\xff\xfe Version: 25.2.0\n'"), "info")
    assert "\ufffd" in text and parse_npu_smi_info(text).driver_version == "25.2.0"
    with pytest.raises(Failed, match=r"`npu-smi info` exited 3: \ufffd"):
        tool_output(tool(tmp_path, "npu-smi", r"printf '\xff\n'; exit 3"), "info")


def test_a_runaway_line_is_bounded_in_what_is_kept_and_what_a_message_quotes(tmp_path):
    from sknet.preflight.hccn import query
    from sknet.preflight.runner import Failed
    from sknet.preflight.tools import MAX_OUTPUT_BYTES, run_tool

    huge = tool(tmp_path, "hccn_tool", "head -c 5000000 /dev/zero | tr '\\0' x; echo")
    assert len(run_tool(huge, "-i", "3", "-ip", "-g").stdout) < MAX_OUTPUT_BYTES + 100
    with pytest.raises(Failed) as failed:
        query(huge, 3, "-ip", r"ipaddr:\s*(\S+)", "ipaddr:<IP>")
    assert "`hccn_tool -i 3 -ip -g` printed" in str(failed.value) and len(str(failed.value)) < 1000


def test_a_hung_tool_is_stopped_with_its_children_within_the_checks_budget_naming_the_device(tmp_path):
    import time

    import psutil

    from sknet.preflight.hccn import query
    from sknet.preflight.runner import Failed
    from sknet.preflight.tools import tool_budget

    hung = tool(tmp_path, "hccn_tool", f"sleep 600 & echo $! > {tmp_path}/child; wait")
    started = time.monotonic()
    with tool_budget(2), pytest.raises(Failed, match=r"`hccn_tool -i 5 -link -g` did not answer within 2 s"):
        query(hung, 5, "-link", r"link status:\s*(\S+)", "link status: UP")
    assert time.monotonic() - started < 10
    child = int((tmp_path / "child").read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    with tool_budget(0), pytest.raises(Failed, match="not run: the check's .* are spent"):
        query(hung, 6, "-link", r"link status:\s*(\S+)", "link status: UP")


def test_a_model_changed_after_it_was_hashed_fails_the_release_as_permanent_not_transient(tmp_path, monkeypatch):
    """Issue #27 §12: the mismatch was a StorageError, so the publish task retried it three times."""
    from sknet.storage import PermanentStorageError, StorageError, publish, sha256_file

    model = tmp_path / "model.mindir"
    model.write_bytes(b"exported and scored")
    facts = {"model.mindir": {"sha256": sha256_file(model)}}  # hashed at export
    model.write_bytes(b"changed afterwards!")  # the same size
    store = LocalStore(tmp_path / "bucket")
    with pytest.raises(PermanentStorageError, match=r"model.mindir changed after it was hashed .* not retried"):
        publish(store, "releases/m/v1", {"model.mindir": model}, file_facts=facts)
    assert not store.exists("releases/m/v1/manifest.json")
    model.write_bytes(b"exported and scored")  # the file as hashed, the stored object damaged: transient, retried
    facts = {"model.mindir": {"sha256": sha256_file(model)}}
    original = LocalStore.put

    def damaging_put(self, src, key):
        original(self, src, key)
        (self.root / key).write_bytes(b"damaged in transit!")

    monkeypatch.setattr(LocalStore, "put", damaging_put)
    with pytest.raises(StorageError) as failed:
        publish(store, "releases/m/v2", {"model.mindir": model}, file_facts=facts)
    assert not isinstance(failed.value, PermanentStorageError)


def test_a_false_census_in_a_manifest_is_not_believed_and_restaging_corrects_it(synthetic_data, tmp_path, caplog):
    """Issue #27 §5: a manifest claiming a test split without 'cat' reached the model card; the census comes from
    the verified files at fetch, and staging the same data again rewrites the manifest's."""
    from sknet.data.source import resolve_dataset
    from sknet.data.stage import stage_dataset
    from sknet.storage import read_manifest

    store = LocalStore(tmp_path / "store" / "datasets" / "cifar10")
    staged = stage_dataset(str(synthetic_data), store)
    manifest = read_manifest(store, staged.digest)
    truth = manifest["census"]["splits"]["test"]["classes"]["cat"]
    manifest["census"]["splits"]["test"]["classes"]["cat"] = 0  # the lie
    store.put_bytes(json.dumps(manifest).encode(), f"{staged.digest}/manifest.json")
    cfg = load_config("cpu-smoke", [f"data.uri={staged.uri}", f"storage.uri=file://{tmp_path / 'store'}"])
    dataset = resolve_dataset(cfg, tmp_path / "cache")
    assert dataset.census["splits"]["test"]["classes"]["cat"] == truth
    assert f"test: cat 0 (the files: {truth})" in caplog.text
    again = stage_dataset(str(synthetic_data), store)
    assert not again.published and again.repaired == ()  # the data is intact: nothing uploaded, no event
    assert read_manifest(store, staged.digest)["census"]["splits"]["test"]["classes"]["cat"] == truth


def test_a_runs_tags_say_the_config_and_device_it_ran_not_the_deployments_default():
    from tasks._support import run_tags

    assert run_tags(["sknet", "ascend", "nightly"], "cpu-smoke", "CPU") == ["sknet", "nightly", "cpu",
                                                                          "config:cpu-smoke"]
    assert run_tags(["sknet", "ascend", "nightly", "config:old"], "/etc/sknet/night.yaml", "Ascend") == [
        "sknet", "nightly", "ascend", "config:night"]


def test_stack_status_finds_the_port_the_running_stack_was_started_on(tmp_path):
    import subprocess
    import sys

    from infra.stack_record import write_record

    write_record(tmp_path, "http://127.0.0.1:4371/api", "sknet-process")
    status = subprocess.run([sys.executable, "-m", "infra.stack", "status", "--home", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout)["api"] == "http://127.0.0.1:4371/api"


def test_sknet_data_help_names_every_subcommand():
    from sknet.cli import build_parser

    shown = build_parser().format_help()
    assert "synth, verify, stage, fetch" in shown


def test_a_model_is_named_one_way_or_the_other_and_both_are_understood(tmp_path, capsys):
    """Issue #27 §17: model.name sknet_tiny is released as sknet-tiny; either spelling works in both places."""
    from sknet.release import publish_release

    assert load_config("cpu-smoke", ["model.name=sknet-tiny"]).model.name == "sknet_tiny"
    store = LocalStore(tmp_path / "store")
    model = tmp_path / "model.mindir"
    model.write_bytes(b"m")
    publish_release(store, "sknet-tiny", "v1", {"model.mindir": model})
    for spelling in ("sknet-tiny", "sknet_tiny"):
        listed = json.loads(sknet_main(capsys, "-q", "release", "ls", "--store", store.uri, "--model", spelling)[1])
        assert [v["version"] for v in listed["models"]["sknet-tiny"]["versions"]] == ["v1"]
