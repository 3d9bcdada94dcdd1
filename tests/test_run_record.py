"""A run directory knows its run: other training settings are refused before compiling, more epochs resume,
--fresh moves the old run aside and keeps it."""

import json
import time

import pytest

from conftest import run_sknet
from helpers import train as train_smoke
from sknet.config import load_config
from sknet.errors import ConfigError
from sknet.training.run_record import check_run_dir, dataset_digest, training_settings

SHORT = ["data.num_train_samples=192", "train.epochs=2", "train.checkpoint_every_steps=6", "train.log_every_steps=3"]


def train(data, out, *extra, check=True):
    return train_smoke(data, out, SHORT, *extra, check=check)


def test_settings_that_decide_the_checkpoints_are_recorded_and_the_others_are_not():
    settings = training_settings(load_config("cpu-smoke"))
    assert {"model.name", "train.batch_size", "train.base_lr", "train.seed", "data.image_size",
            "launch.ranks"} <= set(settings)  # the number of ranks sets the global batch
    assert not {"data.uri", "train.epochs", "train.output_dir", "storage.uri", "launch.backend"} & set(settings)


@pytest.mark.parametrize("override, key", [("train.batch_size=16", "train.batch_size: 32 → 16"),
                                           ("model.stem=imagenet", "model.stem: 'cifar' → 'imagenet'"),
                                           ("train.base_lr=0.2", "train.base_lr: 0.05 → 0.2")])
def test_a_directory_holding_another_run_is_refused_naming_the_keys_and_the_ways_out(
        synthetic_data, tmp_path, override, key):
    check_run_dir(load_config("cpu-smoke"), tmp_path, dataset_digest(synthetic_data))
    extra = [override, "data.image_size=64"] if "stem" in override else [override]
    started = time.monotonic()
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     f"train.output_dir={tmp_path}", *extra, check=False)
    assert proc.returncode == 2
    assert f"{tmp_path} holds a run with other settings (" in proc.stderr and key in proc.stderr
    assert "Use another train.output_dir, or --fresh" in proc.stderr
    assert time.monotonic() - started < 30  # refused before compiling
    assert not (tmp_path / "checkpoints").exists()


def test_the_launcher_refuses_it_before_starting_any_rank(synthetic_data, tmp_path):
    from sknet.launch.launcher import launch

    check_run_dir(load_config("cpu-smoke"), tmp_path, dataset_digest(synthetic_data))
    with pytest.raises(ConfigError, match=r"train\.seed: 1 → 7"):
        launch(load_config("cpu-smoke", ["train.seed=7", f"train.output_dir={tmp_path}", f"data.uri={synthetic_data}"]),
               on_line=lambda line: None)
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_more_epochs_resume_and_fresh_starts_over_keeping_the_old_run(synthetic_data, tmp_path):
    run = tmp_path / "run"
    first = json.loads(train(synthetic_data, run).stdout)
    assert first["steps"] == 12
    longer = json.loads(train(synthetic_data, run, "train.epochs=3").stdout)
    assert longer["resumed_from_step"] == 12 and longer["steps"] == 18 and longer["complete"] is True

    other = train(synthetic_data, run, "train.base_lr=0.1", "--fresh")  # another run, as short as the first
    assert json.loads(other.stdout)["resumed_from_step"] == 0
    (kept,) = tmp_path.glob("run.replaced-*")
    assert "--fresh: the previous run is kept in" in other.stderr
    assert json.loads((kept / "result.json").read_text())["steps"] == 18  # nothing of the old run is lost
    assert json.loads((run / "run.json").read_text())["settings"]["train.base_lr"] == 0.1
