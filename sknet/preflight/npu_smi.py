"""`npu-smi info`: each chip of the plan of the run's chip family, healthy, its HBM free, no process holding it.

The table `npu-smi info` prints (Huawei's npu-smi reference; the same layout on an Atlas 800 with Ascend 910
and an Atlas 800T A2 with 910B, driver 23.x-25.x):

    | npu-smi 24.1.0                   Version: 24.1.0                                               |
    | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
    | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
    +===========================+===============+====================================================+
    | 0     910B3               | OK            | 97.9        34                0    / 0             |
    | 0                         | 0000:C1:00.0  | 0           0    / 0          3408 / 65536         |
    ...
    | NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
    | No running processes found in NPU 0                                                            |
    | 2       0                 | 1333928       | python                   | 37709                   |

Each chip is a pair of rows between separators: (NPU id, name, Health) then (chip id, Bus-Id, usages, the
last `used / total` being HBM). `Version` is the driver's. Health is one of OK, Warning, Alarm, Critical,
UNKNOWN (UNKNOWN: the chip is absent or not started).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from sknet.preflight.runner import Context, Failed, Outcome, Skip
from sknet.preflight.tools import find_tool, shown, tool_output

HEALTHY = "OK"
# An idle chip shows a few GB of HBM as used (the driver's own reservation: ≈3.4 of 64 GB on a 910B3);
# more than this share means something else holds the memory a run needs.
HBM_IDLE_MAX_FRACTION = 0.10
_VERSION = re.compile(r"Version:\s*(\S+)")
_USAGE = re.compile(r"(\d+)\s*/\s*(\d+)")
_PROCESS_HEADER = "Process id"
_NO_PROCESS = "No running processes found"


@dataclass(frozen=True)
class Chip:
    npu: int
    chip: int
    name: str
    health: str
    bus_id: str
    hbm_used_mb: int | None
    hbm_total_mb: int | None

    @property
    def label(self) -> str:
        return f"NPU {self.npu} chip {self.chip} ({self.name}, {self.bus_id})"


@dataclass(frozen=True)
class NpuProcess:
    npu: int
    chip: int
    pid: int
    name: str
    memory_mb: int


@dataclass(frozen=True)
class NpuSmiInfo:
    driver_version: str | None
    chips: list[Chip] = field(default_factory=list)
    processes: list[NpuProcess] = field(default_factory=list)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _chip(npu_row: list[str], chip_row: list[str]) -> Chip:
    npu, name = (npu_row[0].split() + ["?"])[:2]
    usages = _USAGE.findall(chip_row[2]) if len(chip_row) > 2 else []
    used, total = (int(usages[-1][0]), int(usages[-1][1])) if usages else (None, None)
    return Chip(int(npu), int(chip_row[0].split()[0]), name, npu_row[1].split()[0] if npu_row[1] else "?",
                chip_row[1], used, total)


def _process(cells: list[str]) -> NpuProcess | None:
    ids = cells[0].split()
    if len(cells) < 4 or len(ids) < 2 or not all(i.isdigit() for i in ids[:2]) or not cells[1].isdigit():
        return None
    memory = re.match(r"\d+", cells[-1])
    return NpuProcess(int(ids[0]), int(ids[1]), int(cells[1]), cells[2] or "?", int(memory.group()) if memory else 0)


def parse_npu_smi_info(text: str) -> NpuSmiInfo:
    """The chips and processes of `npu-smi info` output (see the module docstring for the layout)."""
    version = _VERSION.search(text)
    chips, processes, pending, in_processes = [], [], None, False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("+"):
            pending = None  # a separator ends a chip's pair of rows
            continue
        if not line.startswith("|") or "npu-smi" in line or "Bus-Id" in line or "Health" in line:
            continue
        if _PROCESS_HEADER in line:
            in_processes = True
            continue
        cells = _cells(line)
        if in_processes:
            if _NO_PROCESS not in line and (process := _process(cells)) is not None:
                processes.append(process)
        elif pending is None and cells[0][:1].isdigit() and len(cells) >= 3:
            pending = cells
        elif pending is not None and cells[0][:1].isdigit():
            chips.append(_chip(pending, cells))
            pending = None
    return NpuSmiInfo(version.group(1) if version else None, chips, processes)


def read_npu_smi() -> NpuSmiInfo:
    """Run `npu-smi info` and parse it; `Skip` when there is no npu-smi, `Failed` when it shows no chip."""
    text = tool_output(find_tool("npu-smi"), "info")
    info = parse_npu_smi_info(text)
    if not info.chips:
        head = shown(" / ".join(line.strip() for line in text.strip().splitlines()[:3]))
        raise Failed(f"`npu-smi info` lists no chip (expected the NPU/Chip table); it printed: {head or 'nothing'}")
    return info


def chip_problems(info: NpuSmiInfo, max_hbm_fraction: float = HBM_IDLE_MAX_FRACTION) -> list[str]:
    """What is wrong with each chip, one line each: health, HBM in use, processes holding it."""
    problems = [f"{c.label}: Health is {c.health}, expected {HEALTHY}" for c in info.chips if c.health != HEALTHY]
    for c in info.chips:
        if c.hbm_total_mb and c.hbm_used_mb is not None and c.hbm_used_mb > max_hbm_fraction * c.hbm_total_mb:
            problems.append(f"{c.label}: {c.hbm_used_mb} of {c.hbm_total_mb} MB HBM in use "
                            f"({c.hbm_used_mb / c.hbm_total_mb:.0%}), expected below {max_hbm_fraction:.0%} "
                            "on an idle chip")
    problems += [f"NPU {p.npu} chip {p.chip}: held by process {p.pid} ({p.name}) using {p.memory_mb} MB; "
                 "stop it before training" for p in info.processes]
    return problems


def _planned_npus(ctx: Context) -> tuple[set[int] | None, str]:
    """The physical NPUs this host's ranks use (None: the plan cannot say; every chip is checked), and a note."""
    from sknet.preflight.hccn import planned_devices

    try:
        devices, _ = planned_devices(ctx.cfg)
    except (Failed, Skip) as exc:
        return None, f"every chip checked: {exc}"
    return {d.device for d in devices}, ""


def family_problem(info: NpuSmiInfo, chip: str | None) -> str | None:
    """Why the chips `npu-smi` lists are not the run's chip (the image's, or launch.chip), if they are not."""
    from sknet.launch.admission import CHIP_ENV, chip_family

    if chip is None:
        return None
    others = sorted({c.name for c in info.chips if chip_family(c.name) != chip})
    if not others:
        return None
    return (f"npu-smi lists {', '.join(others)} chip(s), but this run is for the Ascend {chip} (launch.chip, else "
            f"the image's {CHIP_ENV}): use the image built with CHIP={chip.lower()} for these nodes, or the other "
            "chip's image here")


def check_npu_smi(ctx: Context) -> Outcome:
    """The chips of the plan's NPUs (`npu-smi info`): the run's chip family, Health OK, HBM nearly free, no process
    on them. Chips the plan does not use (another job's) are left alone."""
    from sknet.launch.admission import run_chip

    if ctx.cfg.train.device_target != "Ascend":
        raise Skip(f"train.device_target={ctx.cfg.train.device_target}: this run uses no NPU")
    info = read_npu_smi()
    planned, note = _planned_npus(ctx)
    mine = NpuSmiInfo(info.driver_version, [c for c in info.chips if planned is None or c.npu in planned],
                      [p for p in info.processes if planned is None or p.npu in planned])
    data = {"driver_version": info.driver_version, "chips": [asdict(c) for c in mine.chips],
            "processes": [asdict(p) for p in mine.processes], "planned_npus": sorted(planned or [])}
    problems = chip_problems(mine)
    if planned is not None and (absent := sorted(planned - {c.npu for c in info.chips})):
        problems.append(f"NPU(s) {', '.join(map(str, absent))} of the plan: not listed by `npu-smi info`")
    if (wrong := family_problem(mine, run_chip(ctx.cfg))) is not None:
        problems.insert(0, wrong)
    if problems:
        raise Failed("\n".join(problems), data)
    names = sorted({c.name for c in mine.chips})
    others = len(info.chips) - len(mine.chips)
    left = f"; {others} chip(s) outside the plan not checked" if others else ""
    return Outcome(f"{len(mine.chips)} chip(s) of the plan ({', '.join(names)}): Health OK, HBM free, no processes"
                   f"{left}" + (f" ({note})" if note else ""), data)
