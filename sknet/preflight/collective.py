"""A collective smoke over all ranks of the plan, started through the real launcher.

Each rank runs `python -m sknet.preflight.collective_rank` instead of `sknet train`, with the run's own
backend, rank table and environment (on CPU: `launch.ranks` ranks over MindSpore's `mccl`). It passes when
the group has `launch.ranks` members and an all-reduce (SUM) of ones gives the rank count everywhere; it
reports the 64 MiB all-reduce's algorithm bandwidth (bytes / time, GB/s, median of a few).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from sknet.config import Config
from sknet.errors import LaunchError
from sknet.preflight.runner import Context, Failed, Outcome, Skip
from sknet.preflight.tools import has_tool

log = logging.getLogger(__name__)

TIMEOUT_MINUTES = 10.0  # joining, one small graph compile and six all-reduces: minutes at most
RESULT_FILE = "collective.json"
RANK_MODULE = "sknet.preflight.collective_rank"


def rank_command(cfg: Config, out: Path) -> list[str]:
    """What each rank runs; msrun takes a script path and runs it with its own `python`."""
    args = ["--out", str(out), "--device-target", cfg.train.device_target]
    if cfg.launch.backend == "msrun":
        return [sys.executable, str(Path(__file__).with_name("collective_rank.py")), *args]
    return [sys.executable, "-m", RANK_MODULE, *args]


def judge(result: dict, ranks: int) -> Outcome:
    """Pass when the group and both sums are right; the detail gives the bandwidth."""
    expected = [float(ranks), float(ranks)]
    problems = []
    if result["group_size"] != ranks:
        problems.append(f"the group has {result['group_size']} rank(s), expected launch.ranks={ranks}")
    for what, key in (("a tensor of ones", "ones_sum"), ("the 64 MiB payload of ones", "payload_sum")):
        if result[key] != expected:
            low, high = result[key]
            problems.append(f"an all-reduce (SUM) of {what} gave values {low:g}…{high:g}, expected {ranks} "
                            "on every element")
    if problems:
        raise Failed("\n".join(problems), result)
    mib = result["payload_bytes"] / 2**20
    return Outcome(
        f"{ranks} rank(s) joined over {result['backend']}; all-reduce (SUM) of ones = {ranks} everywhere; "
        f"{mib:g} MiB all-reduce: {result['algbw_gbps']:.3f} GB/s algorithm bandwidth "
        f"(median of {len(result['seconds'])}: {result['median_seconds'] * 1e3:.1f} ms)", result)


def check_collective(ctx: Context) -> Outcome:
    """Start every rank of the plan on the smoke program; judge what rank 0 saw."""
    from sknet.launch.launcher import launch

    cfg = ctx.cfg
    if cfg.train.device_target == "Ascend" and not has_tool("npu-smi"):
        raise Skip("train.device_target=Ascend but npu-smi not found on PATH: not an Ascend host")
    if cfg.launch.backend == "cpu" and cfg.launch.ranks == 1:
        raise Skip("launch.ranks=1 on CPU: one rank trains without a collective group (nothing to all-reduce)")
    ctx.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="collective-", dir=ctx.work)).resolve()
    smoke = cfg.override({"train.output_dir": str(scratch), "train.checkpoint_mirror": "",
                          "launch.timeout_minutes": TIMEOUT_MINUTES})
    out = scratch / RESULT_FILE
    try:
        launch(smoke, on_line=log.debug, command=rank_command(smoke, out))
    except LaunchError as exc:
        if not (scratch / "logs").exists():  # refused before any rank started: nothing worth keeping
            shutil.rmtree(scratch, ignore_errors=True)
            raise Failed(f"the collective smoke could not start: {exc}") from None
        raise Failed(f"the collective smoke failed (logs in {scratch / 'logs'}): {exc}") from None
    if not out.is_file():
        if cfg.launch.node_rank != 0:
            return Outcome(f"this node's ranks finished; rank 0 (node 0) judges the collective ({scratch})")
        raise Failed(f"every rank exited 0 but rank 0 wrote no {out} (logs in {scratch / 'logs'})")
    outcome = judge(json.loads(out.read_text()), cfg.launch.ranks)
    shutil.rmtree(scratch, ignore_errors=True)  # our own scratch run: kept only when something failed
    return outcome
