"""The Ascend driver's command-line tools (`npu-smi`, `hccn_tool`): found, run, and their absence a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sknet.preflight.runner import Failed, Skip

# The driver installs hccn_tool here, often without putting it on PATH (npu-smi usually is, in /usr/local/sbin).
DRIVER_TOOLS = Path("/usr/local/Ascend/driver/tools")
TOOL_TIMEOUT_SECONDS = 60


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


def run_tool(executable: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool to completion; a hang longer than TOOL_TIMEOUT_SECONDS is a failure naming the command."""
    command = [executable, *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise Failed(f"`{Path(executable).name} {' '.join(args)}` did not answer within "
                     f"{TOOL_TIMEOUT_SECONDS} s (a hung driver?)") from None


def tool_output(executable: str, *args: str) -> str:
    """The tool's stdout; a non-zero exit is a failure quoting the command and what it printed."""
    proc = run_tool(executable, *args)
    if proc.returncode != 0:
        said = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()[-1]
        raise Failed(f"`{Path(executable).name} {' '.join(args)}` exited {proc.returncode}: {said}")
    return proc.stdout
