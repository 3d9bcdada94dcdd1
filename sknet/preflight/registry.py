"""The preflight checks, in the order they run. Add a check here: a name, a function of a `Context`, and
`slow=True` when `--quick` (what the flow runs before training) should leave it out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sknet.config import Config
from sknet.launch.ranktable import HCCN_CONF
from sknet.preflight.collective import check_collective
from sknet.preflight.hccn import check_device_ips, check_device_links
from sknet.preflight.launch_plan import check_launch_plan
from sknet.preflight.npu_smi import check_npu_smi
from sknet.preflight.runner import Check, CheckResult, Context, Outcome, run_checks
from sknet.preflight.tools import tool_budget
from sknet.preflight.training import check_sigterm, check_sink_smoke
from sknet.preflight.versions import check_versions


def _budgeted(run: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
    """`run` with its tool calls sharing one budget (`sknet.preflight.tools.tool_budget`): a hung tool cannot take
    the whole preflight."""
    def within_budget(ctx: Context) -> Outcome:
        with tool_budget():
            return run(ctx)

    return within_budget


CHECKS: list[Check] = [
    Check("versions", _budgeted(check_versions)),
    Check("npu-smi", _budgeted(check_npu_smi)),
    Check("device-links", _budgeted(check_device_links)),
    Check("device-ips", _budgeted(check_device_ips)),
    Check("launch-plan", check_launch_plan),
    Check("collective", check_collective, slow=True),
    Check("sink-smoke", check_sink_smoke, slow=True),
    Check("sigterm", check_sigterm, slow=True),
]

DEFAULT_WORK = Path("work/preflight")
QUICK_TIMEOUT_SECONDS = 300  # the fast checks take seconds; a hung driver tool times out in one minute each


def run_preflight(cfg: Config, work: str | Path = DEFAULT_WORK, *, quick: bool = False,
                  hccn_conf: str | Path = HCCN_CONF, checks: Sequence[Check] | None = None,
                  on_result: Callable[[CheckResult], None] | None = None,
                  on_start: Callable[[Check], None] | None = None) -> dict:
    """Run every check (the fast ones only with `quick`): `{"passed": bool, "checks": [...]}`."""
    ctx = Context(cfg=cfg, work=Path(work), hccn_conf=Path(hccn_conf))
    return run_checks(CHECKS if checks is None else checks, ctx, quick=quick, on_result=on_result,
                      on_start=on_start)


def check_host(cfg: Config, work: str | Path = DEFAULT_WORK) -> dict:
    """The fast checks (`sknet preflight --quick`) in a process of their own, as the flow runs them before an
    Ascend run: importing MindSpore sets `HCCL_CONNECT_TIMEOUT` in the importing process, which must stay the
    launcher's to set. The report; `PreflightFailed` naming each failed check and why."""
    import json
    import subprocess
    import sys
    import tempfile

    from sknet.preflight.runner import FAIL, PreflightFailed

    Path(work).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=work) as config:
        config.write(cfg.to_yaml())
        config.flush()
        command = [sys.executable, "-m", "sknet", "-q", "preflight", "--quick", "--config", config.name,
                   "--work", str(work)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise PreflightFailed(f"sknet preflight --quick did not finish within {QUICK_TIMEOUT_SECONDS} s") from None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise PreflightFailed(f"sknet preflight exited {proc.returncode} without a report: "
                              f"{proc.stderr.strip()[-2000:]}") from None
    failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if c["status"] == FAIL]
    if failed:
        raise PreflightFailed("preflight failed on this host: " + "; ".join(failed))
    return report

