"""Whether a run may start, decided once: `admit` is the one function the rank (`sknet.training.loop`), the dry
run (`sknet launch --dry-run`, and so every launch) and `sknet preflight` call, so that whatever can refuse a run
refuses it in all three, before anything touches a device.

It decides
- the step plan for the run's world size (`sknet.training.steps.plan_steps`: steps per epoch as MindSpore counts a
  rank's shard, the sink, and the log and checkpoint cadence on sink boundaries);
- the chip's topology rule for the devices of each server of the job (`check_topology`).
The host's own facts (its devices, its place in the rank table) are the launcher's (`check_launchable`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sknet.config import Config
from sknet.data.layout import TRAIN_RECORDS
from sknet.errors import LaunchError
from sknet.launch.ranktable import load_rank_table, server_topology_problem
from sknet.training.steps import StepPlan, plan_steps

CHIP_ENV = "SKNET_ASCEND_CHIP"  # set by infra/ascend/Dockerfile to the chip the image was built for
CHIP_NAMES = {"910": "910", "910b": "910B"}
# The chip Names `npu-smi info` prints (and the Ascend device plugin reports as the node label
# node.kubernetes.io/npu.chip.name) of each family: MindCluster scheduling guide, "Native Kubernetes Objects"
# (node labels: {xxx}A, 910PremiumA, 910ProA, 910ProB; {xxx}Bx with x in 1-4, {xxx} = 910).
CHIP_FAMILIES = {"910": ("910A", "910ProA", "910ProB", "910PremiumA"), "910B": ("910B1", "910B2", "910B3", "910B4")}


class TopologyError(LaunchError):
    """The devices a run would use are a set its chip's interconnect cannot run as one job."""


@dataclass(frozen=True)
class Admission:
    steps: StepPlan
    chip: str | None  # "910" or "910B"; None when neither launch.chip nor the image names it, or not Ascend
    servers: tuple[tuple[int, ...], ...]  # the physical devices of each server of the job (empty: not known here)
    notes: tuple[str, ...] = ()  # what costs throughput in this plan, and the setting that avoids it

    def to_dict(self) -> dict:
        return {**self.steps.to_dict(), "chip": self.chip, "devices_per_server": [len(s) for s in self.servers],
                "notes": list(self.notes)}


def admit(cfg: Config, *, world_size: int | None = None, train_records: int = TRAIN_RECORDS) -> Admission:
    """The run's step plan and topology, or the `ConfigError`/`LaunchError` that refuses it.

    `world_size` is the ranks actually joined (a rank passes its group's size; default `launch.ranks`) and
    `train_records` the training records of the verified layout."""
    steps = plan_steps(cfg, world_size, train_records)
    chip = run_chip(cfg)
    servers = planned_servers(cfg)
    if chip is not None and servers:
        check_topology(chip, servers)
    return Admission(steps, chip, servers, throughput_notes(cfg, chip))


def throughput_notes(cfg: Config, chip: str | None) -> tuple[str, ...]:
    """What the plan costs per step that another setting would not: with a dynamic loss scale on a 910B, MindSpore
    checks overflow with one fused AllFinite kernel, but `TrainOneStepWithLossScaleCell` turns it off whenever
    RANK_TABLE_FILE is set (mindspore/nn/wrap/loss_scale.py, `__init__`: `if "RANK_TABLE_FILE" in os.environ:
    self.enable_allfinite = False`), leaving one IsFinite per gradient each step; msrun sets no rank table. (A 910
    checks overflow through its status register, NPUGetFloatStatusV2, either way.)"""
    if chip == "910B" and cfg.launch.backend == "ascend" and cfg.train.loss_scale_mode == "dynamic":
        return ("launch.backend=ascend sets RANK_TABLE_FILE, which turns MindSpore's fused AllFinite overflow check "
                "off on a 910B (one IsFinite per gradient each step instead); launch.backend=msrun keeps it on",)
    return ()


def run_chip(cfg: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The Ascend chip of the run: `launch.chip`, else the image's (`SKNET_ASCEND_CHIP`), else None."""
    if cfg.train.device_target != "Ascend":
        return None
    environ = os.environ if environ is None else environ
    chip = cfg.launch.chip or environ.get(CHIP_ENV, "").strip()
    if not chip:
        return None
    if chip.lower() not in CHIP_NAMES:
        raise LaunchError(f"{CHIP_ENV}={chip!r} (the image's chip): expected 910 or 910b")
    return CHIP_NAMES[chip.lower()]


def chip_family(name: str) -> str | None:
    """The family ("910", "910B") of a chip Name as `npu-smi info` prints it, None for another chip (310P, …)."""
    for family, names in CHIP_FAMILIES.items():
        if name in names:
            return family
    return "910B" if name.startswith("910B") and name[4:5].isdigit() else None  # e.g. 910B2C


def planned_servers(cfg: Config) -> tuple[tuple[int, ...], ...]:
    """The physical devices of each server of the job: the rank table's (ascend), or 0…local-1 on each of
    `launch.nodes` (msrun hands a node's workers its devices in order); empty for CPU ranks or without a table."""
    launch = cfg.launch
    if cfg.train.device_target != "Ascend" or launch.backend == "cpu":
        return ()
    if launch.backend == "msrun":
        return (tuple(range(launch.ranks // launch.nodes)),) * launch.nodes
    if not launch.rank_table or not Path(launch.rank_table).is_file():
        return ()  # the launcher refuses a missing table, naming it; a rank started by hand has none
    table = load_rank_table(launch.rank_table)
    return tuple(tuple(int(d["device_id"]) for d in s["device"]) for s in table["server_list"])


def check_topology(chip: str, servers: tuple[tuple[int, ...], ...]) -> None:
    """Refuse device sets the chip cannot run as one job, naming the server and the rule
    (`sknet.launch.ranktable.server_topology_problem`); an Ascend 910 cluster runs the same number of devices on
    every server (1×n, 2×n, 4×n or 8×n: the same Huawei page)."""
    for index, devices in enumerate(servers):
        if (problem := server_topology_problem(chip, devices)) is not None:
            where = f"server {index} of {len(servers)}" if len(servers) > 1 else "this job's server"
            fix = "; an Atlas A2 takes any set (launch.chip=910B)" if chip == "910" else ""
            raise TopologyError(f"Ascend {chip}, {where}: {problem}{fix}")
    if chip == "910" and len({len(devices) for devices in servers}) > 1:
        raise TopologyError(f"Ascend 910: devices per server {[len(s) for s in servers]}; an Ascend 910 "
                            "cluster runs the same number on every server (1×n, 2×n, 4×n or 8×n)")
