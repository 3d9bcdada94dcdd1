"""Advisory file locks (`fcntl.flock`) that name their holder.

A lock belongs to an open file: the kernel releases it when the holder closes the file or exits, however it
exits, so a crashed or SIGKILLed holder leaves no stale lock and nothing has to clean one up. The holder
writes its pid and command line into the lock file, so a process that finds the lock taken can say who
holds it. A lock file is never deleted: unlinking one while another process waits on it would let a third
process lock a new file of the same name at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sknet.errors import SknetError


class LockBusy(SknetError):
    """Another process holds a lock that was asked for without waiting."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.holder = holder


@contextmanager
def exclusive_lock(path: str | Path, *, wait: bool = True,
                   on_wait: Callable[[str], object] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created with its parents) for the `with` block.

    Taken: with `wait`, block until it is free (`on_wait(holder)` is called first, e.g. to log who we wait
    for); without, raise `LockBusy` naming the holder. The holder's record (pid, command line, since when)
    is written into the file once the lock is ours.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        busy = _holder_if_busy(fd, path)
        if busy is not None:
            if not wait:
                raise LockBusy(path, busy)
            if on_wait is not None:
                on_wait(busy)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder_if_busy(fd: int, path: Path, patience: float = 0.5) -> str | None:
    """None once the lock is ours; else who holds it.

    A holder writes its record just after it locks, so for a moment the file may be empty or name a
    previous, dead holder: such a record is read again for up to `patience` seconds.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            record = _read_record(path)
        if _alive(record.get("pid")) or time.monotonic() > deadline:
            return _describe(record)
        time.sleep(0.01)


def _describe(record: dict) -> str:
    """'pid N (command), since T' from a holder's record."""
    if "pid" not in record:
        return "another process (it has not written its pid)"
    return f"pid {record['pid']} ({record.get('command', '?')}), since {record.get('since', '?')}"


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text() or "{}")  # written by _write_holder
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_holder(fd: int) -> None:
    record = {"pid": os.getpid(), "command": shlex.join(sys.orig_argv),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
