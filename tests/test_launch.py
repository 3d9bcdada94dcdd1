"""The launcher with real processes: stand-in commands for Ascend, real 2-rank CPU training."""

import json
import os
import sys
import threading
import time

import psutil
import pytest

from sknet.config import load_config
from sknet.launch.launcher import LaunchError, launch
from sknet.launch.ranktable import build_rank_table, read_hccn_conf, write_rank_table
from test_ranktable import GOLDEN

ENV_PROBE = [sys.executable, "-c", "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
             "('DEVICE_ID', 'RANK_ID', 'RANK_SIZE', 'RANK_TABLE_FILE')}))"]
SLEEPER = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(300)"]


def processes_running(marker: str) -> list[psutil.Process]:
    """Every process (but this one) with `marker` in its command line."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid != os.getpid() and any(marker in part for part in process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            pass
    return found


def test_ascend_backend_gives_each_rank_its_device_rank_and_table(tmp_path):
    table = write_rank_table(build_rank_table(read_hccn_conf(GOLDEN / "hccn-server1.conf"), range(4), "10.0.0.1"),
                             tmp_path / "rank_table.json")
    cfg = load_config("cifar10-ascend8", ["launch.ranks=4", f"launch.rank_table={table}", "launch.server_id=10.0.0.1",
                                          f"train.output_dir={tmp_path / 'run'}"])
    lines = []
    result = launch(cfg, on_line=lines.append, command=ENV_PROBE, devices=8)
    assert result.ok and result.exit_codes == {"0": 0, "1": 0, "2": 0, "3": 0}
    for rank in range(4):
        logged = (tmp_path / "run" / "logs" / f"rank-{rank}.log").read_text()
        assert json.loads(logged) == {"DEVICE_ID": str(rank), "RANK_ID": str(rank), "RANK_SIZE": "4",
                                      "RANK_TABLE_FILE": str(table)}
        assert any(line.startswith(f"[rank {rank}] {{") for line in lines)


def test_more_ranks_than_devices_is_refused_before_anything_starts(tmp_path):
    cfg = load_config("cpu-smoke", [f"launch.ranks={os.cpu_count() + 1}", f"train.output_dir={tmp_path}"])
    with pytest.raises(LaunchError, match=rf"needs {os.cpu_count() + 1} local CPU cores, this host has"):
        launch(cfg)
    assert not (tmp_path / "logs").exists()


def test_ascend_backend_without_a_rank_table_is_refused(tmp_path):
    cfg = load_config("cifar10-ascend8", [f"train.output_dir={tmp_path}"])
    with pytest.raises(LaunchError, match="needs launch.rank_table"):
        launch(cfg, devices=8)


def test_timeout_stops_every_process(tmp_path):
    cfg = load_config("cpu-smoke", ["launch.ranks=2", "launch.timeout_minutes=0.05", f"train.output_dir={tmp_path}"])
    marker = f"{tmp_path}"
    command = [*SLEEPER, marker]
    with pytest.raises(LaunchError, match=r"timed out after 0.05 min") as error:
        launch(cfg, command=command, on_line=lambda line: None)
    assert error.value.result.failed_rank is None
    assert set(error.value.result.exit_codes) == {"sched", "0", "1"}
    assert not processes_running(marker)


@pytest.mark.slow
class TestTwoCpuRanks:
    OVERRIDES = ["launch.ranks=2", "data.num_train_samples=256", "train.epochs=2", "train.batch_size=16",
                 "train.checkpoint_every_steps=2", "train.log_every_steps=1", "train.keep_checkpoints=5"]

    def test_a_killed_rank_stops_the_run_and_a_relaunch_resumes_to_identical_weights_on_disjoint_shards(
            self, synthetic_data, tmp_path):
        from sknet.model import build_model
        from sknet.training.runtime import fusion_split_indices

        cfg = load_config("cpu-smoke", [*self.OVERRIDES, f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}"])
        killed = threading.Event()
        killed_at = []

        def kill_rank_1_after_a_checkpoint(line):
            if not killed.is_set() and line.startswith("[rank 0] ") and "step 5/16" in line:
                killed.set()
                for process in processes_running(str(tmp_path / "config.yaml")):
                    if process.environ().get("MS_NODE_ID") == "1":
                        process.kill()
                        killed_at.append(time.monotonic())

        with pytest.raises(LaunchError, match=r"rank 1 exited with code -9") as error:
            launch(cfg, on_line=kill_rank_1_after_a_checkpoint)
        assert error.value.result.failed_rank == "1"
        assert error.value.result.last_lines
        assert not processes_running(str(tmp_path / "config.yaml"))
        assert killed_at and time.monotonic() - killed_at[0] < 60  # every process gone within 60 s

        lines = []
        result = launch(cfg, on_line=lines.append)
        assert result.ok and result.exit_codes["0"] == 0 and result.exit_codes["1"] == 0
        resumed = json.loads((tmp_path / "result.json").read_text())
        assert resumed["resumed_from_step"] >= 4 and resumed["steps"] == 16
        # data parallel: both ranks end with the same weights, each having read its own half of the data
        ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
        assert [(r["shard_id"], r["num_shards"]) for r in ranks] == [(0, 2), (1, 2)]
        assert ranks[0]["batches_per_epoch"] == 8  # 256 samples / 2 shards / batch 16
        tiny = [p.size for p in build_model("sknet_tiny", 10, "cifar").trainable_params()]  # 81 gradients
        assert ranks[0]["all_reduce_fusion"] == ranks[1]["all_reduce_fusion"] == fusion_split_indices(tiny)
        assert len(ranks[0]["all_reduce_fusion"]) == 3  # four fused all-reduces a step
        assert any(line.startswith("[rank 1] ") and "step 16/16" in line for line in lines)
        assert "step 16/16" in (tmp_path / "logs" / "rank-0.log").read_text()

    def test_sigterm_to_the_launcher_stops_every_rank_after_the_same_step_with_a_checkpoint(self, synthetic_data,
                                                                                           tmp_path):
        import signal
        import subprocess

        command = [sys.executable, "-m", "sknet", "launch", "--config", "cpu-smoke", "--set",
                   *self.OVERRIDES, f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}",
                   "train.checkpoint_every_steps=0"]
        launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in launcher.stderr:
            if line.startswith("[rank 1] ") and " step 3/16 " in line:
                launcher.send_signal(signal.SIGTERM)  # as a cancelled flow run or a drained node would
                break
        rest = launcher.stderr.read()
        assert launcher.wait(120) == -signal.SIGTERM  # it ends as it was asked to, after its ranks
        records = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
        assert records[0]["steps"] == records[1]["steps"] < 16  # both stopped after the same step
        assert records[0]["parameters_sha256"] == records[1]["parameters_sha256"]
        step = records[0]["steps"]
        assert (tmp_path / "checkpoints" / f"step-{step:08d}.ckpt").exists()
        launched = json.loads((tmp_path / "launch.json").read_text())
        assert launched["reason"].startswith("SIGTERM") and set(launched["exit_codes"].values()) <= {143, 0}
        assert "stopped by SIGTERM at step" in rest
        assert not processes_running(str(tmp_path / "config.yaml"))


@pytest.mark.slow
def test_msrun_backend_trains_two_ranks(synthetic_data, tmp_path):
    cfg = load_config("cpu-smoke", [*TestTwoCpuRanks.OVERRIDES, "launch.backend=msrun", "train.epochs=1",
                                    f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}"])
    lines = []
    result = launch(cfg, on_line=lines.append)
    assert result.ok and result.exit_codes == {"msrun": 0}
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"] and ranks[1]["steps"] == 8
    assert any(line.startswith("[rank 1] ") and "step 8/8" in line for line in lines)


NOISY = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'bad byte \\xff here\\n'); "
         "[print('x' * 200) for _ in range(2000)]; print('done', flush=True)"]


def test_the_callback_takes_one_line_at_a_time_so_ranks_lines_never_interleave(tmp_path):
    """Each rank's output is read on a thread of its own; unserialized, a callback that prints (`sknet launch`
    writes a line and then its newline) mixed two ranks' lines mid-line and a reader missed a rank's step."""
    table = write_rank_table(build_rank_table(read_hccn_conf(GOLDEN / "hccn-server1.conf"), range(2), "10.0.0.1"),
                             tmp_path / "rank_table.json")
    cfg = load_config("cifar10-ascend8", ["launch.ranks=2", f"launch.rank_table={table}", "launch.server_id=10.0.0.1",
                                          f"train.output_dir={tmp_path / 'run'}"])
    inside, overlaps, lines = [], [], []

    def slow_callback(line):
        inside.append(line)
        overlaps.append(len(inside) > 1)
        time.sleep(0.001)  # a write, a flush: time in which the other rank's thread runs
        lines.append(line)
        inside.remove(line)

    launch(cfg, on_line=slow_callback, command=[sys.executable, "-c", "[print(i) for i in range(300)]"], devices=8)
    assert [sum(line.startswith(f"[rank {rank}] ") for line in lines) for rank in (0, 1)] == [300, 300]
    assert not any(overlaps)


def test_undecodable_output_and_a_failing_callback_never_stall_a_rank(tmp_path):
    cfg = load_config("cpu-smoke", ["launch.ranks=1", "launch.timeout_minutes=1", f"train.output_dir={tmp_path}"])

    def broken_callback(line):
        raise ConnectionError("Prefect API unreachable")

    result = launch(cfg, on_line=broken_callback, command=NOISY)  # 400 kB through the pipe, past its buffer
    assert result.ok and result.exit_codes["0"] == 0
    logged = (tmp_path / "logs" / "rank-0.log").read_text()
    assert "bad byte \ufffd here" in logged and logged.rstrip().endswith("done")
