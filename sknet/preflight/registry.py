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
from sknet.preflight.runner import Check, CheckResult, Context, run_checks
from sknet.preflight.versions import check_versions

CHECKS: list[Check] = [
    Check("versions", check_versions),
    Check("npu-smi", check_npu_smi),
    Check("device-links", check_device_links),
    Check("device-ips", check_device_ips),
    Check("launch-plan", check_launch_plan),
    Check("collective", check_collective, slow=True),
]

DEFAULT_WORK = Path("work/preflight")


def run_preflight(cfg: Config, work: str | Path = DEFAULT_WORK, *, quick: bool = False,
                  hccn_conf: str | Path = HCCN_CONF, checks: Sequence[Check] | None = None,
                  on_result: Callable[[CheckResult], None] | None = None) -> dict:
    """Run every check (the fast ones only with `quick`): `{"passed": bool, "checks": [...]}`."""
    ctx = Context(cfg=cfg, work=Path(work), hccn_conf=Path(hccn_conf))
    return run_checks(CHECKS if checks is None else checks, ctx, quick=quick, on_result=on_result)
