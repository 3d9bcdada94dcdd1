"""Checkpoints carry a sha256 record: a damaged one is named and skipped on resume, refused by eval/export,
never pulled from the mirror over a local one."""

import json
from pathlib import Path

import pytest

from conftest import run_sknet
from helpers import train as train_smoke
from sknet.errors import CheckpointError
from sknet.training.checkpoint import (
    CheckpointMirror,
    checkpoint_path,
    latest_verified_checkpoint,
    list_checkpoints,
    record_path,
    write_record,
)

SHORT = ["data.num_train_samples=192", "train.epochs=2", "train.checkpoint_every_steps=4",
         "train.log_every_steps=1", "train.keep_checkpoints=5"]  # 6 steps per epoch: checkpoints 4, 8, 12


def train(data, out, *extra, check=True):
    return train_smoke(data, out, SHORT, *extra, check=check)


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    train(synthetic_data, out)
    return out


def copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.slow
def test_every_checkpoint_has_a_record_that_verifies(trained):
    steps = [step for step, _ in list_checkpoints(trained)]
    assert steps == [4, 8, 12]
    for step, path in list_checkpoints(trained):
        record = json.loads(record_path(path).read_text())
        assert record["step"] == step and record["bytes"] == path.stat().st_size
    assert latest_verified_checkpoint(trained)[0] == 12
    assert not list((trained / "checkpoints").glob(".partial-*"))  # nothing half-written keeps a name


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(
        synthetic_data, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    newest = checkpoint_path(run, 12)
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = train(synthetic_data, run)
    assert f"skipping a checkpoint: checkpoint {newest} is damaged: 1,000 bytes" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["resumed_from_step"] == 8 and result["steps"] == 12 and result["complete"] is True


@pytest.mark.slow
def test_flipped_bytes_are_caught_before_eval(synthetic_data, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    path = checkpoint_path(run, 12)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = run_sknet("eval", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     "--checkpoint", str(path), check=False)
    assert proc.returncode == 2
    assert f"checkpoint {path} is damaged: its sha256 differs from the one recorded" in proc.stderr


@pytest.mark.slow
def test_when_no_checkpoint_verifies_the_run_stops_and_says_so(synthetic_data, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    for _, path in list_checkpoints(run):
        path.write_bytes(b"garbage")
    proc = train(synthetic_data, run, check=False)
    assert proc.returncode == 2
    assert "none of the 3 checkpoint(s) in" in proc.stderr and "verifies" in proc.stderr


def test_a_damaged_mirrored_checkpoint_is_never_pulled_over_anything(store, tmp_path):
    source = tmp_path / "source"
    mirror = CheckpointMirror(store)
    for step in (10, 20):
        path = checkpoint_path(source, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"weights {step}".encode())
        write_record(path, step)
        mirror.push(source, step, keep=3)
    store.put_bytes(b"weights 2X", "step-00000020.ckpt")  # same size, other bytes: damaged in the bucket
    assert mirror.pull(tmp_path / "other") == 10  # the newest that verifies
    assert [s for s, _ in list_checkpoints(tmp_path / "other")] == [10]
    assert not list((tmp_path / "other" / "checkpoints").glob(".partial*"))


def test_a_checkpoint_without_its_record_does_not_verify(tmp_path):
    path = checkpoint_path(tmp_path, 4)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    with pytest.raises(CheckpointError, match="has no integrity record step-00000004.ckpt.sha256"):
        latest_verified_checkpoint(tmp_path)


def test_a_failed_save_leaves_no_debris(tmp_path, monkeypatch):
    """A full disk while saving: MindSpore's own temp file and ours are removed, nothing gets a final name."""
    import mindspore as ms

    from sknet.training.checkpoint import save_checkpoint

    def full_disk(cell, path):
        Path(path).with_suffix(".tmp").write_bytes(b"half a checkpoint")  # as MindSpore leaves it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(object(), tmp_path, 5, keep=2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []
