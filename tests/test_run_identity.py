"""A release is only ever what it says (issue #18 §1): a run directory and its checkpoint mirror belong to one
training — its dataset and the settings that decide its weights — and are never continued by another; a
checkpoint past the run's end is refused; an incomplete training is never evaluated or released."""

import json
import shutil

import pytest

from helpers import train as train_smoke
from sknet.training.run_record import dataset_digest

pytestmark = pytest.mark.slow

SHORT = ["data.num_train_samples=64", "train.epochs=2", "train.checkpoint_every_steps=2", "train.log_every_steps=2",
         "train.keep_checkpoints=5"]  # 2 epochs of 2 steps


def train(data, out, *extra, check=False):
    return train_smoke(data, out, SHORT, *extra, check=check)


@pytest.fixture(scope="module")
def other_data(synthetic_data, tmp_path_factory):
    """The synthetic layout with one pixel changed: still CIFAR-10, another dataset (another digest)."""
    copy = tmp_path_factory.mktemp("other-data")
    shutil.copytree(synthetic_data / "cifar-10-batches-bin", copy / "cifar-10-batches-bin")
    batch = copy / "cifar-10-batches-bin" / "data_batch_1.bin"
    data = bytearray(batch.read_bytes())
    data[100] ^= 0xFF
    batch.write_bytes(bytes(data))
    return copy


@pytest.fixture(scope="module")
def finished(synthetic_data, tmp_path_factory):
    """A finished 4-step run (checkpoints of steps 2 and 4)."""
    out = tmp_path_factory.mktemp("finished")
    assert json.loads(train(synthetic_data, out, check=True).stdout)["complete"] is True
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_run_directory_records_its_dataset_and_another_dataset_is_refused(finished, other_data, synthetic_data,
                                                                          tmp_path):
    run = copy_of(finished, tmp_path)
    assert json.loads((run / "run.json").read_text())["dataset_digest"] == dataset_digest(synthetic_data)
    proc = train(other_data, run)  # before: resumed at its last step, trained 0 steps, "complete": true
    assert proc.returncode == 2
    assert f"dataset_digest: '{dataset_digest(synthetic_data)}' → '{dataset_digest(other_data)}'" in proc.stderr
    assert json.loads((run / "result.json").read_text())["resumed_from_step"] == 0  # the first run's, untouched


def test_a_checkpoint_past_the_runs_last_step_is_refused(finished, synthetic_data, tmp_path):
    from sknet.training.checkpoint import checkpoint_path, write_record

    run = copy_of(finished, tmp_path)
    planted = checkpoint_path(run, 99)  # before: "resuming … (step 99 of 4)", exit 0
    shutil.copyfile(checkpoint_path(run, 4), planted)
    write_record(planted, 99)
    proc = train(synthetic_data, run)
    assert proc.returncode == 2
    assert f"checkpoint {planted} is of step 99, past this run's last step 4" in proc.stderr


def test_fewer_epochs_than_the_checkpoint_reached_are_refused(finished, synthetic_data, tmp_path):
    proc = train(synthetic_data, copy_of(finished, tmp_path), "train.epochs=1")
    assert proc.returncode == 2 and "is of step 4, past this run's last step 2" in proc.stderr


def test_a_mirror_of_another_training_is_never_pulled(finished, other_data, synthetic_data, tmp_path, s3_server,
                                                      bucket):
    """The same run id on another machine with another dataset, or another seed: refused before anything is
    pulled (before: it pulled the first run's final checkpoint, trained 0 steps and was released as its own)."""
    mirror = [f"train.checkpoint_mirror=s3://{bucket}/runs/r1/checkpoints",
              f"storage.endpoint_url={s3_server.endpoint}"]
    first = train(synthetic_data, tmp_path / "machine-a", *mirror)
    assert first.returncode == 0, first.stderr[-2000:]
    for data, extra, change in [(other_data, [], f"dataset_digest: '{dataset_digest(synthetic_data)}'"),
                                (synthetic_data, ["train.seed=2"], "train.seed: 1 → 2")]:
        machine_b = tmp_path / f"machine-b-{change[:5]}"
        proc = train(data, machine_b, *mirror, *extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"the checkpoint mirror s3://{bucket}/runs/r1/checkpoints holds another training (" in proc.stderr
        assert change in proc.stderr
        assert not (machine_b / "checkpoints").exists()  # nothing pulled
    again = train(synthetic_data, tmp_path / "machine-c", *mirror)  # the same training elsewhere: resumes
    assert again.returncode == 0 and json.loads(again.stdout)["resumed_from_step"] == 4


def test_an_incomplete_training_is_never_evaluated_or_released(tmp_path):
    from sknet.run_outputs import IncompleteTraining, training_outcome

    (tmp_path / "result.json").write_text(json.dumps({"complete": False, "steps": 3, "epochs": 2, "final_loss": 1.2}))
    with pytest.raises(IncompleteTraining, match=r"is not complete \(step 3 of 2 epochs"):
        training_outcome({"ok": True, "local_ranks": [0]}, tmp_path)
