"""No rank outlives its launcher: not when the launcher is SIGKILLed, not msrun's workers after a timeout."""

import json
import subprocess
import sys
import time

import pytest

from sknet.config import load_config
from sknet.launch.launcher import LaunchError, launch
from test_launch import processes_running

pytestmark = pytest.mark.slow

OVERRIDES = ["data.num_train_samples=256", "train.epochs=4", "train.batch_size=16", "train.log_every_steps=1",
             "train.checkpoint_every_steps=0", "launch.stop_grace_seconds=60"]


def wait_until_gone(marker: str, seconds: float) -> float:
    started = time.monotonic()
    while processes_running(marker):
        assert time.monotonic() - started < seconds, [p.info["cmdline"] for p in processes_running(marker)]
        time.sleep(0.5)
    return time.monotonic() - started


def test_ranks_stop_with_a_checkpoint_when_their_launcher_is_killed(synthetic_data, tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sknet", "launch", "--config", "cpu-smoke", "--set", *OVERRIDES, "launch.ranks=2",
         f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in launcher.stderr:
        if line.startswith("[rank 1] ") and " step 2/" in line:
            launcher.kill()  # SIGKILL: no finally, no handler; the ranks are on their own
            break
    launcher.wait()
    seconds = wait_until_gone(str(tmp_path / "config.yaml"), 90)
    # their output went to the dead launcher; what they wrote themselves tells how they ended
    result = json.loads((tmp_path / "result.json").read_text())
    records = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert result["complete"] is False and records[0]["steps"] == records[1]["steps"] == result["steps"] < 32
    assert (tmp_path / "checkpoints" / f"step-{result['steps']:08d}.ckpt").exists()  # saved, then left
    print(f"ranks gone {seconds:.1f} s after the launcher was killed")


def test_msrun_workers_do_not_outlive_a_timed_out_launch(synthetic_data, tmp_path):
    cfg = load_config("cpu-smoke", [*OVERRIDES, "launch.backend=msrun", "launch.ranks=1",
                                    "launch.timeout_minutes=0.5", "train.epochs=50",
                                    f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}"])
    with pytest.raises(LaunchError, match="timed out after 0.5 min"):
        launch(cfg, on_line=lambda line: None)
    wait_until_gone(str(tmp_path / "config.yaml"), 15)
