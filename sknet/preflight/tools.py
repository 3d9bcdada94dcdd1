"""The Ascend driver's command-line tools (`npu-smi`, `hccn_tool`): found, run, and their absence a skip.

A tool is input like any other: what it prints is decoded with replacement (a non-UTF-8 byte is not a crash), at
most MAX_OUTPUT_BYTES of it is kept (a runaway line cannot fill a report), what reaches a message is cut to
MAX_SHOWN characters, and each call is timed so that a check's calls together fit its budget (`tool_budget`,
set by the preflight runner per check): a hung tool is killed with its process group and the failure names the
command, and so the device (`hccn_tool -i N …`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sknet.preflight.runner import Failed, Skip

# The driver installs hccn_tool here, often without putting it on PATH (npu-smi usually is, in /usr/local/sbin).
DRIVER_TOOLS = Path("/usr/local/Ascend/driver/tools")
TOOL_TIMEOUT_SECONDS = 20  # one call: npu-smi info takes ≈ 1 s, hccn_tool < 1 s
CHECK_BUDGET_SECONDS = 50  # all of one check's calls (8 devices × 3 hccn_tool calls): 4 such checks fit in 300 s
MAX_OUTPUT_BYTES = 1 << 20  # npu-smi info of a 16-chip server is ≈ 8 kB
MAX_SHOWN = 300  # characters of a tool's output quoted in a message
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("tool_deadline", default=None)


def find_tool(name: str) -> str:
    """The tool's path, from PATH or the driver's tools directory; `Skip` when neither has it."""
    found = shutil.which(name) or shutil.which(name, path=str(DRIVER_TOOLS))
    if found is None:
        raise Skip(f"{name} not found on PATH or in {DRIVER_TOOLS}: not an Ascend host")
    return found


def has_tool(name: str) -> bool:
    try:
        find_tool(name)
    except Skip:
        return False
    return True


@contextlib.contextmanager
def tool_budget(seconds: float = CHECK_BUDGET_SECONDS) -> Iterator[None]:
    """The tool calls made inside share `seconds` in all (each call still at most TOOL_TIMEOUT_SECONDS)."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` fit to quote in a message: stripped, and cut to `limit` characters with the rest counted."""
    text = text.strip()
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def run_tool(executable: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool to completion within its time (see the module docstring); a tool that does not finish is
    killed with its process group and is a failure naming the command."""
    command = f"{Path(executable).name} {' '.join(args)}"
    deadline = _DEADLINE.get()
    timeout = TOOL_TIMEOUT_SECONDS if deadline is None else min(TOOL_TIMEOUT_SECONDS, deadline - time.monotonic())
    if timeout <= 0:
        raise Failed(f"`{command}` not run: the check's {CHECK_BUDGET_SECONDS} s for its tool calls are spent "
                     "(an earlier call hung)")
    process = subprocess.Popen([executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    outputs = [_Capture(process.stdout), _Capture(process.stderr)]
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise Failed(f"`{command}` did not answer within {timeout:.0f} s (a hung driver?); it was stopped") from None
    finally:
        for capture in outputs:
            capture.thread.join(timeout=5)
    return subprocess.CompletedProcess([executable, *args], process.returncode, outputs[0].text(), outputs[1].text())


class _Capture:
    """Reads a pipe to its end in a thread, keeping the first MAX_OUTPUT_BYTES (the tool never blocks on it)."""

    def __init__(self, pipe):
        self.pipe, self.kept, self.dropped = pipe, bytearray(), 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with self.pipe:
            while chunk := self.pipe.read(65536):
                room = MAX_OUTPUT_BYTES - len(self.kept)
                self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        return text + (f"\n[{self.dropped:,} more bytes not kept]" if self.dropped else "")


def tool_output(executable: str, *args: str) -> str:
    """The tool's stdout; a non-zero exit is a failure quoting the command and (a bounded part of) what it
    printed."""
    proc = run_tool(executable, *args)
    if proc.returncode != 0:
        said = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()[-1]
        raise Failed(f"`{Path(executable).name} {' '.join(args)}` exited {proc.returncode}: {shown(said)}")
    return proc.stdout
