"""A stalled job is a failed job (issue #20 §4): `launch.stall_timeout_seconds`.

The watch alone, on a clock the test moves; the launcher with a stand-in rank that stops itself (SIGSTOP); and a
genuine collective hang: two CPU ranks (mccl) training, one of them stopped after a few steps, the other blocked
in its all-reduce. The stalled launch is retried as the train task retries it, and the retry resumes.
"""

import json
import sys
import time

import pytest
from prefect.states import Failed

from sknet.config import load_config
from sknet.errors import ConfigError
from sknet.launch.launcher import STOP_GRACE_SECONDS, LaunchError, launch
from sknet.launch.stall import StallWatch
from sknet.training.train_log import format_step_line
from tasks._support import transient_only
from test_launch import processes_running


def step(rank: int, n: int, total: int = 10) -> str:
    return f"[rank {rank}] 2026-12-06 06:00:00 INFO {format_step_line(1, 1, n, total, 2.3, 0.1, 50.0)}"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_no_stall_before_the_first_step_however_long_compiling_takes(clock):
    watch = StallWatch(30, [0, 1], clock)
    watch.observe("[rank 0] compiling the graph")
    clock.now += 3600
    assert watch.check() == []


def test_a_silence_longer_than_the_timeout_names_every_rank_still_training_laggard_first(clock):
    watch = StallWatch(30, [0, 1], clock)
    watch.observe(step(1, 4))
    clock.now += 2
    watch.observe(step(0, 5))
    watch.observe("[rank 0] waiting in all-reduce")
    clock.now += 29
    assert watch.check() == []  # rank 0's step 29 s ago: not yet
    clock.now += 2
    stalled = watch.check()
    assert [(r.rank, r.last_step, r.seconds_since) for r in stalled] == [("1", 4, 33.0), ("0", 5, 31.0)]
    assert stalled[1].last_lines[-1] == "waiting in all-reduce"
    assert watch.reason() == ("stalled: no rank logged a step for 30 s (launch.stall_timeout_seconds); the ranks "
                              "that stopped advancing: rank 1 at step 4, 33 s since its last step line; "
                              "rank 0 at step 5, 31 s since its last step line")
    assert "rank 0, last lines:\n  " in watch.last_lines() and "  waiting in all-reduce" in watch.last_lines()


def test_any_rank_logging_a_step_keeps_the_run_alive_and_a_rank_without_steps_is_named(clock):
    watch = StallWatch(10, [0, 1, 2], clock)
    for n in range(1, 5):
        watch.observe(step(0, n))
        clock.now += 9
        assert watch.check() == []
    clock.now += 2
    assert [(r.rank, r.last_step, r.seconds_since) for r in watch.check()] == [("1", None, 38.0), ("2", None, 38.0),
                                                                             ("0", 4, 11.0)]
    assert "rank 1, no step logged in 38 s" in watch.reason()


def test_ranks_that_logged_their_last_step_are_done_not_stalled(clock):
    watch = StallWatch(10, [0, 1], clock)
    watch.observe(step(0, 10))
    watch.observe(step(1, 9))
    clock.now += 60  # rank 0 writes its final checkpoint and uploads it: no step line
    assert [r.rank for r in watch.check()] == ["1"]
    watch.observe(step(1, 10))
    clock.now += 60
    assert watch.check() == []


def test_zero_turns_the_watch_off_and_lines_of_no_rank_are_ignored(clock):
    off = StallWatch(0, [0], clock)
    off.observe(step(0, 1))
    clock.now += 1e6
    assert off.check() == []
    watch = StallWatch(5, [0], clock)
    for line in ("[scheduler] " + step(0, 1), "[rank msrun] " + step(0, 1), step(0, 1)[len("[rank 0] "):]):
        watch.observe(line)
    clock.now += 60
    assert watch.check() == [] and watch.first_step_at is None and not watch.tails["0"]


def test_the_key_is_validated_and_the_ascend_profile_turns_it_on():
    assert load_config("cpu-smoke").launch.stall_timeout_seconds == 0
    assert load_config("cifar10-ascend8").launch.stall_timeout_seconds == 1800
    with pytest.raises(ConfigError, match=r"launch.stall_timeout_seconds: got -1"):
        load_config("cpu-smoke", ["launch.stall_timeout_seconds=-1"])


# a rank that logs one step, then rank 1 stops itself (SIGSTOP) and the others wait; each exits on SIGTERM
STOPS_ITSELF = [sys.executable, "-c", "\n".join([
    "import os, signal, sys, time",
    "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(143)))",
    f"print({format_step_line(1, 1, 1, 10, 2.3, 0.1, 50.0)!r}, flush=True)",
    "os.environ.get('MS_NODE_ID') == '1' and os.kill(os.getpid(), signal.SIGSTOP)",
    "time.sleep(300)",
])]


def test_a_stall_stops_every_rank_even_a_stopped_one_and_fails_as_transient(tmp_path):
    cfg = load_config("cpu-smoke", ["launch.ranks=2", "launch.stall_timeout_seconds=1", f"train.output_dir={tmp_path}"])
    started = time.monotonic()
    with pytest.raises(LaunchError) as error:
        launch(cfg, command=[*STOPS_ITSELF, str(tmp_path)], on_line=lambda line: None)
    seconds = time.monotonic() - started
    assert seconds < STOP_GRACE_SECONDS  # the stopped rank took its SIGTERM (CONT), it was not left to the KILL
    result = error.value.result
    assert {r["rank"] for r in result.stalled} == {"0", "1"} and result.failed_rank == result.stalled[0]["rank"]
    assert all(r["last_step"] == 1 and r["seconds_since"] >= 1 for r in result.stalled)
    assert str(error.value).startswith("stalled: no rank logged a step for 1 s (launch.stall_timeout_seconds)")
    assert "rank 1, last lines:\n  epoch 1/1 step 1/10" in str(error.value)
    assert "got SIGTERM" in (tmp_path / "logs" / "rank-1.log").read_text()
    assert json.loads((tmp_path / "launch.json").read_text())["stalled"] == result.stalled
    assert transient_only(None, None, Failed(data=error.value)) is True  # the train task retries it
    assert not processes_running(str(tmp_path))


@pytest.mark.slow
def test_a_collective_hang_is_found_every_rank_stopped_and_the_retry_resumes(synthetic_data, tmp_path):
    """Rank 1 is SIGSTOPped after its step 3: rank 0 blocks in the next step's all-reduce, a genuine hang."""
    timeout = 5
    cfg = load_config("cpu-smoke", ["launch.ranks=2", "data.num_train_samples=256", "train.epochs=1",
                                    "train.batch_size=16", "train.checkpoint_every_steps=2", "train.log_every_steps=1",
                                    f"launch.stall_timeout_seconds={timeout}", f"data.uri={synthetic_data}",
                                    f"train.output_dir={tmp_path}"])
    stopped_at, found_at = [], []

    def stop_rank_1_after_step_3(line: str) -> None:
        if not stopped_at and line.startswith("[rank 1] ") and " step 3/8 " in line:
            ranks = processes_running(str(tmp_path / "config.yaml"))
            [rank] = [p for p in ranks if p.environ().get("MS_NODE_ID") == "1"]
            rank.suspend()  # SIGSTOP
            stopped_at.append(time.monotonic())
        elif line.startswith("stopping all ranks: stalled"):
            found_at.append(time.monotonic())

    with pytest.raises(LaunchError, match=rf"stalled: no rank logged a step for {timeout} s") as error:
        launch(cfg, on_line=stop_rank_1_after_step_3)
    assert stopped_at and found_at[0] - stopped_at[0] < timeout + 2  # found within the timeout plus a poll or two
    result = error.value.result
    assert {r["rank"] for r in result.stalled} == {"0", "1"}
    assert all(3 <= r["last_step"] < 8 for r in result.stalled)
    assert not processes_running(str(tmp_path / "config.yaml"))
    assert transient_only(None, None, Failed(data=error.value)) is True

    retried = launch(cfg, on_line=lambda line: None)  # what the train task's retry runs: the same launch
    assert retried.ok
    resumed = json.loads((tmp_path / "result.json").read_text())
    assert resumed["resumed_from_step"] >= 2 and resumed["steps"] == 8 and resumed["complete"]
