"""A run whose loss goes bad stops early and loudly, keeps only finite checkpoints and writes valid JSON."""

import json

import numpy as np
import pytest

from conftest import run_sknet
from sknet.config import load_config
from sknet.launch.launcher import LaunchError, launch
from sknet.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

DIVERGING = ["train.base_lr=1e9", "train.checkpoint_every_steps=2", "train.log_every_steps=1"]


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as every non-Python parser does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def finite_checkpoint(path) -> bool:
    import mindspore as ms

    return all(np.isfinite(p.asnumpy()).all() for p in ms.load_checkpoint(str(path)).values())


def test_a_diverging_run_stops_in_its_first_epoch_naming_the_step(synthetic_data, tmp_path):
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     f"train.output_dir={tmp_path}", *DIVERGING, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("sknet: error: loss is non-finite at step ")
    step = int(message.split(" at step ")[1].split()[0])
    assert step < 20  # cpu-smoke: 20 steps per epoch
    assert proc.stdout == ""  # an error prints no result; result.json records the stop
    result = strict_json((tmp_path / "result.json").read_text())
    assert result["complete"] is False and result["final_loss"] is None and result["steps"] == step
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    checkpoints = list_checkpoints(tmp_path)
    assert all(saved < step - 4 for saved, _ in checkpoints)  # nothing from the bad stretch (patience 5)
    assert all(finite_checkpoint(path) for _, path in checkpoints)
    if checkpoints:
        assert str(checkpoints[-1][1]) in message  # the way back is named


def test_a_loss_above_max_loss_counts_as_divergence(synthetic_data, tmp_path):
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     f"train.output_dir={tmp_path}", "train.max_loss=0.01", "train.divergence_patience=2",
                     check=False)
    assert proc.returncode == 3
    assert "sknet: error: loss is above train.max_loss=0.01 at step 2 " in proc.stderr


def test_the_launcher_reports_a_diverged_rank_so_nobody_retries_it(synthetic_data, tmp_path):
    from prefect.states import Failed

    from tasks._support import transient_only

    cfg = load_config("cpu-smoke", [f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}", *DIVERGING])
    with pytest.raises(LaunchError, match=r"rank 0 diverged") as error:
        launch(cfg, on_line=lambda line: None)
    assert error.value.result.diverged is True
    assert strict_json((tmp_path / "launch.json").read_text())["diverged"] is True
    assert transient_only(None, None, Failed(data=error.value)) is False
