"""The check runner: each check on its own, timed, its outcome recorded; the report and its table.

A check is a plain function of a `Context`. It returns an `Outcome` (pass), raises `Failed` (it ran and
found a fault, named in the message) or `Skip` (it cannot run on this host; the message says why). Any
other exception is that check's failure, with the exception named: no check ever hides another.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sknet.errors import SknetError

if TYPE_CHECKING:
    from sknet.config import Config

PASS, FAIL, SKIP = "pass", "fail", "skip"
Status = Literal["pass", "fail", "skip"]


class Skip(Exception):
    """This check cannot run on this host; the message says why."""


class Failed(Exception):
    """The check ran and found a fault; the message names it (device, file, value, what was expected)."""

    def __init__(self, detail: str, data: dict | None = None):
        super().__init__(detail)
        self.data = data or {}


class PreflightFailed(SknetError):
    """At least one preflight check failed; the message names them."""


@dataclass(frozen=True)
class Outcome:
    """A passed check: what it found, in words (`detail`) and in numbers (`data`)."""

    detail: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What every check gets: the resolved config, a scratch directory, and where hccn.conf is."""

    cfg: Config
    work: Path
    hccn_conf: Path


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Outcome]
    slow: bool = False  # left out by --quick (minutes, or processes started)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    seconds: float
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "seconds": self.seconds,
                "data": self.data}


def run_check(check: Check, ctx: Context) -> CheckResult:
    """One check, whatever it does: an unexpected exception becomes its `fail`, with the exception named."""
    started = time.monotonic()
    try:
        outcome = check.run(ctx)
        status, detail, data = PASS, outcome.detail, outcome.data
    except Skip as exc:
        status, detail, data = SKIP, str(exc), {}
    except Failed as exc:
        status, detail, data = FAIL, str(exc), exc.data
    except Exception as exc:  # noqa: BLE001 - the point: one broken check must not hide the others
        where = traceback.extract_tb(exc.__traceback__)[-1]
        status, data = FAIL, {}
        detail = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
    return CheckResult(check.name, status, detail, round(time.monotonic() - started, 2), data)


def run_checks(checks: Iterable[Check], ctx: Context, *, quick: bool = False,
               on_result: Callable[[CheckResult], None] | None = None,
               on_start: Callable[[Check], None] | None = None) -> dict:
    """Every check in order (slow ones skipped under `quick`): `{"passed": bool, "checks": [...]}`. `on_start` is
    told of each slow check as it starts (minutes without a line read like a hang)."""
    results = []
    for check in checks:
        if quick and check.slow:
            result = CheckResult(check.name, SKIP, "a slow check: left out by --quick", 0.0)
        else:
            if check.slow and on_start is not None:
                on_start(check)
            result = run_check(check, ctx)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return {"passed": all(r.status != FAIL for r in results), "checks": [r.to_dict() for r in results]}


def enforce(report: dict) -> dict:
    """Raise `PreflightFailed` naming the failed checks, if any."""
    failed = [c["name"] for c in report["checks"] if c["status"] == FAIL]
    if failed:
        raise PreflightFailed(f"preflight failed: {', '.join(failed)} (details above, and in the JSON on stdout)")
    return report


NAME_WIDTH = 14
TABLE_HEADER = f"{'check':<{NAME_WIDTH}} {'status':<6} {'seconds':>7}  detail"


def format_row(result: CheckResult) -> str:
    """A table row; a detail of several lines continues under the detail column."""
    lines = result.detail.splitlines() or [""]
    status = result.status.upper() if result.status == FAIL else result.status
    indent = " " * (NAME_WIDTH + 1 + 6 + 1 + 7 + 2)
    first = f"{result.name:<{NAME_WIDTH}} {status:<6} {result.seconds:>7.2f}  {lines[0]}"
    return "\n".join([first, *(indent + line for line in lines[1:])])


def summary(report: dict) -> str:
    counts = {status: sum(c["status"] == status for c in report["checks"]) for status in (PASS, FAIL, SKIP)}
    verdict = "passed" if report["passed"] else "FAILED"
    return f"preflight {verdict}: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"
