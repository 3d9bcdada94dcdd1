"""The processes a launch supervises: each rank's output pumped line by line to its log and a callback, msrun's
worker logs followed (an earlier attempt's moved aside first), SIGTERM to the launcher turned into a graceful
stop, and every process group stopped (TERM, CONT, then KILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from sknet.launch.ranks import SCHEDULER

STOP_GRACE_SECONDS = 10
TAIL_LINES = 20


class Supervised:
    """One supervised process: output pumped line by line to its log file and the callback."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log_path: Path,
                 on_line: Callable[[str], None]):
        self.name, self.tail = name, deque(maxlen=TAIL_LINES)
        self.log = open(log_path, "a", buffering=1)
        self.process = subprocess.Popen(  # bytes: one undecodable byte must not stop the reader
            list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        prefix = f"[rank {name}] " if name != SCHEDULER else "[scheduler] "
        self.pump = threading.Thread(target=self._pump, args=(prefix, on_line), daemon=True)
        self.pump.start()

    def _pump(self, prefix: str, on_line: Callable[[str], None]) -> None:
        """Read to the end whatever comes: a reader that stopped would leave the rank blocked on a full pipe."""
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.log.write(line + "\n")
            self.tail.append(line)
            on_line(prefix + line)  # never raises: see _never_raising

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def descendants(self) -> list:
        """Every process this one started, its own sessions included (msrun starts its workers in new ones,
        beyond the reach of our process-group signals)."""
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        self.pump.join(timeout=5)
        self.log.close()


class LogTail:
    """Follows a log file another process writes (msrun's worker_N.log), line by line, until stopped. A file
    truncated under it (msrun opens its worker logs with "w") is followed again from its start."""

    def __init__(self, path: Path, prefix: str, on_line: Callable[[str], None]):
        self.path, self.prefix, self.on_line = path, prefix, on_line
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        while not self.path.exists():
            if self.done.wait(0.2):
                return
        with open(self.path, errors="replace") as stream:
            pending = ""
            while True:
                chunk = stream.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        self.on_line(self.prefix + pending.rstrip("\n"))
                        pending = ""
                elif self.done.is_set():
                    return
                else:
                    if _size(self.path) < stream.tell():  # truncated and written anew: read it from its start
                        stream.seek(0)
                        pending = ""
                    time.sleep(0.1)

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def retire_worker_logs(log_dir: Path) -> list[Path]:
    """Move an earlier attempt's msrun worker logs to `logs/attempt-K/` before msrun starts again: msrun rewrites
    them from the start ("w"), and a follower reading the old lines would report attempt 1's steps as attempt 2's
    (or a stall while attempt 2 progresses). The moved files are returned."""
    old = sorted(log_dir.glob("worker_*.log"))
    if not old:
        return []
    attempt = 1 + sum(1 for p in log_dir.glob("attempt-*") if p.is_dir())
    kept = log_dir / f"attempt-{attempt}"
    kept.mkdir()
    return [path.rename(kept / path.name) for path in old]


class SigtermWatch:
    """SIGTERM to the launcher (a cancelled flow run, a drained node, a spot reclaim) becomes a graceful stop
    of its ranks; afterwards the signal goes again to whoever handled it before (Prefect's handler, or the
    default: exit 143), so the launcher is stopped as it was asked to be."""

    def __init__(self):
        self.received = threading.Event()
        self._previous = None

    def __enter__(self) -> SigtermWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.received.set())
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGTERM, self._previous)
        if self.received.is_set():
            os.kill(os.getpid(), signal.SIGTERM)


def stop_all(processes: Sequence[Supervised], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """TERM to every process group and every descendant, KILL to whatever still runs `grace_seconds` later.

    Descendants are collected first: once their parent exits they are no longer found through it. CONT follows
    the TERM: a stopped process (SIGSTOP, a debugger) would hold the TERM pending until KILL.
    """
    import psutil

    descendants = [child for rank in processes for child in rank.descendants()]
    for rank in processes:
        rank.signal(signal.SIGTERM)
        rank.signal(signal.SIGCONT)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.terminate()  # psutil checks the PID still names the same process
            child.resume()
    deadline = time.monotonic() + grace_seconds
    for rank in processes:
        try:
            rank.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    psutil.wait_procs(descendants, timeout=max(0.1, deadline - time.monotonic()))
    for rank in processes:
        rank.signal(signal.SIGKILL)  # the whole group: nothing the rank started outlives it
        rank.process.wait()
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
