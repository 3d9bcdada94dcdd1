"""`make run` and `make up` refuse a work dir another of them is using; a dead holder's lock is no obstacle."""

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from infra.run_local import WORK_LOCK, WorkDirBusy, lock_work_dir

REPO = Path(__file__).resolve().parent.parent
HOLDER = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from infra.run_local import lock_work_dir
with ExitStack() as held:
    lock_work_dir(held, Path(sys.argv[1]), "elsewhere")
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held_work(tmp_path):
    """A work dir whose lock a live process holds, as a running `make run` would."""
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield work, holder
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("command", [["infra.run_local", "--work"], ["infra.stack", "up", "--work"]],
                         ids=["make run", "make up"])
def test_a_work_dir_in_use_is_refused_naming_the_process_before_any_work(held_work, command):
    work, holder = held_work
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", *command, str(work)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "SKNET_PREFECT_PORT": "1"})
    assert proc.returncode == 2, proc.stderr
    program = "make run" if command[0] == "infra.run_local" else "make up"
    assert f"{program}: error: work dir {work} is in use by pid {holder.pid} (" in proc.stderr
    assert "Wait for it to finish or stop it, or use another work dir: " in proc.stderr
    assert sorted(p.name for p in work.iterdir()) == [WORK_LOCK]  # nothing staged, no server started
    assert time.monotonic() - started < 60


def test_the_lock_of_a_killed_holder_is_free_at_once(held_work):
    work, holder = held_work
    os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up: the lock file stays, naming a dead pid
    holder.wait()
    assert (work / WORK_LOCK).exists()
    with ExitStack() as held:
        lock_work_dir(held, work, "elsewhere")
        assert f'"pid": {os.getpid()}' in (work / WORK_LOCK).read_text()


def test_a_second_holder_in_one_process_is_refused_too(tmp_path):
    with ExitStack() as held:
        lock_work_dir(held, tmp_path, "elsewhere")
        with pytest.raises(WorkDirBusy, match=rf"work dir {tmp_path} is in use by pid {os.getpid()} "):
            lock_work_dir(ExitStack(), tmp_path, "elsewhere")
    with ExitStack() as held:  # released when the first closed
        lock_work_dir(held, tmp_path, "elsewhere")
