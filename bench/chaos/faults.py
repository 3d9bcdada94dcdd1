"""The chaos bench's faults: which ones hit which run and when (seeded), and the injector that fires them
during a run and undoes the timed ones (the proxy's S3 fault rate, the ballast that fills the disk)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.processes import send_signal
from bench.chaos.site import STEPS, Site

KINDS = ("s3", "kill_rank", "sigterm_flow", "disk_full")
BALLAST_SLACK = 64 * 1024  # bytes left free when the disk is "full"

log = logging.getLogger("bench.chaos")


def plan_faults(runs: int, seed: int) -> list[list[dict]]:
    """One or two faults per run. The first cycles through every kind in a seeded order (so each kind is
    met once every four runs); a second one of another kind joins a third of the runs."""
    rng = random.Random(seed)
    order = list(KINDS)
    rng.shuffle(order)
    plans = []
    for index in range(runs):
        kinds = [order[index % len(order)]]
        if rng.random() < 1 / 3:
            kinds.append(rng.choice([k for k in KINDS if k != kinds[0]]))
        plans.append([_fault(kind, rng) for kind in kinds])
    return plans


def _fault(kind: str, rng: random.Random) -> dict:
    if kind == "s3":  # during training (the checkpoint mirror's uploads) or from the end of training on (the
        # evaluation, publishing the run, the release and LATEST); at 0.9, 0.9^9 ≈ 39 % of requests fail every try
        during = rng.choice(["training", "publishing"])
        at = {"at_step": rng.randint(2, STEPS - 2)} if during == "training" else {}
        return {"kind": kind, "during": during, **at,
                "hold_seconds": round(rng.uniform(10, 30 if during == "training" else 40), 1),
                "rate": rng.choice([0.3, 0.6, 0.9])}
    if kind == "disk_full":  # a step before a checkpoint (every 5 steps), so the next save meets a full disk
        return {"kind": kind, "at_step": 5 * rng.randint(1, STEPS // 5 - 1) - rng.randint(1, 3),
                "hold_seconds": round(rng.uniform(10, 40), 1)}
    return {"kind": kind, "at_step": rng.randint(2, STEPS - 2)}


@dataclass
class Fault:
    spec: dict
    injected_at: float | None = None  # seconds after the run was created
    ended_at: float | None = None
    detail: dict = field(default_factory=dict)

    def due(self, step: int, trained: bool) -> bool:
        if self.injected_at is not None:
            return False
        if self.spec.get("during") == "publishing":
            return trained
        return step >= self.spec["at_step"]

    def to_dict(self) -> dict:
        return {**self.spec, "injected": self.injected_at is not None,
                "injected_at_seconds": None if self.injected_at is None else round(self.injected_at, 1),
                "ended_at_seconds": None if self.ended_at is None else round(self.ended_at, 1), **self.detail}


class Injector:
    """Fires a run's faults when their moment comes and undoes the timed ones (S3 rate, ballast)."""

    def __init__(self, site: Site, run_id: str, faults: list[dict]):
        self.site, self.run_id = site, run_id
        self.faults = [Fault(spec) for spec in faults]
        self.ballast = site.work / "ballast.bin"

    def tick(self, elapsed: float, step: int, trained: bool, processes: list[dict]) -> None:
        for fault in self.faults:
            if fault.injected_at is None and fault.due(step, trained):
                self._inject(fault, elapsed, processes)
            elif fault.injected_at is not None and fault.ended_at is None and "hold_seconds" in fault.spec \
                    and elapsed - fault.injected_at >= fault.spec["hold_seconds"]:
                self._end(fault, elapsed)

    def _inject(self, fault: Fault, elapsed: float, processes: list[dict]) -> None:
        kind = fault.spec["kind"]
        if kind == "s3":
            fault.detail["proxy_faults_before"] = self.site.proxy.injected
            self.site.proxy.rate = fault.spec["rate"]
        elif kind == "disk_full":
            fault.detail.update(_fill_disk(self.site.work, self.ballast))
        else:
            role = "rank" if kind == "kill_rank" else "flow-run"
            targets = [p for p in processes if p["role"] == role]
            if not targets:
                return  # not there (yet, or any more): try again at the next tick
            sig = signal.SIGKILL if kind == "kill_rank" else signal.SIGTERM
            fault.detail.update({"pid": targets[0]["pid"], "signal": sig.name,
                                 "delivered": send_signal(targets[0], sig)})
        fault.injected_at = elapsed
        log.info("run %s: injected %s at %.1f s", self.run_id[:8], fault.to_dict(), elapsed)

    def _end(self, fault: Fault, elapsed: float) -> None:
        if fault.spec["kind"] == "s3":
            self.site.proxy.rate = 0.0
            fault.detail["proxy_faults_injected"] = self.site.proxy.injected - fault.detail.pop("proxy_faults_before")
        elif fault.spec["kind"] == "disk_full":
            self.ballast.unlink(missing_ok=True)
        fault.ended_at = elapsed

    def end_all(self, elapsed: float) -> None:
        for fault in self.faults:
            if fault.injected_at is not None and fault.ended_at is None and "hold_seconds" in fault.spec:
                self._end(fault, elapsed)


def _fill_disk(work: Path, ballast: Path) -> dict:
    """Fill the file system of `work` with the file `ballast`, all but BALLAST_SLACK bytes of it."""
    size = max(0, _free_bytes(work) - BALLAST_SLACK)
    with open(ballast, "wb") as stream:
        try:
            os.posix_fallocate(stream.fileno(), 0, size)
        except OSError:  # fill what fits
            chunk = b"\0" * 2**20
            with contextlib.suppress(OSError):
                while True:
                    stream.write(chunk)
    return {"ballast_bytes": ballast.stat().st_size, "free_bytes_after": _free_bytes(work)}


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize
