"""Input from a bucket, a flag or a parameter that is shaped wrong is refused with a clear error naming it, never a
traceback (issue #27 §4, §8, §9, §10)."""

import json

import pytest

from conftest import run_sknet
from sknet.config import load_config
from sknet.errors import ConfigError
from sknet.storage import LocalStore
from sknet.training.checkpoint import CheckpointMirror, checkpoint_path, latest_checkpoint, write_record
from sknet.training.run_record import RUN_RECORD_FILE, check_run_dir


@pytest.mark.parametrize("moment", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30+05:00"])
def test_a_time_outside_the_representable_years_in_utc_is_a_clear_error(moment, tmp_path):
    from sknet.release_history import parse_time

    with pytest.raises(ConfigError, match="in UTC this is outside the years 1 to 9999"):
        parse_time(moment)
    proc = run_sknet("release", "ls", "--store", str(tmp_path), "--model", "sknet50", "--at", moment, check=False)
    assert proc.returncode == 2 and "outside the years 1 to 9999" in proc.stderr and "Traceback" not in proc.stderr


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
    from sknet.training.run_record import training_settings
    from sknet.training_key import training_key

    one, two = (load_config("cpu-smoke", [f"data.num_parallel_workers={n}"]) for n in (1, 2))
    assert training_settings(one)["data.num_parallel_workers"] == 1
    assert training_key(one, "d" * 64) != training_key(two, "d" * 64)


def test_an_msrun_retry_is_followed_from_its_own_first_line(tmp_path):
    """Issue #27 §6: a retry's follower replayed attempt 1's worker log and never saw attempt 2's lines (msrun
    opens worker_N.log with "w"), so a progressing retry was killed as stalled."""
    import time

    from sknet.launch.launcher import _LogTail, retire_worker_logs

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker_0.log").write_text("attempt 1: epoch 1/1 step 40/40\n")
    assert [p.relative_to(logs).as_posix() for p in retire_worker_logs(logs)] == ["attempt-1/worker_0.log"]
    seen: list[str] = []
    tail = _LogTail(logs / "worker_0.log", "[rank 0] ", seen.append)
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
