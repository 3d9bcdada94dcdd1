"""Each NPU the launch plan uses: its RoCE link and network health, and its IP as `hccn_tool`, hccn.conf and the
rank table give it.

`hccn_tool` output (Huawei's HCCN Tool interface reference, as quoted by MindSpore's and MindCluster's docs):

    hccn_tool -i 0 -link -g        →  link status: UP             (DOWN: no link on the NIC)
    hccn_tool -i 0 -net_health -g  →  net health status: Success  (Init: no detect address set; Fault, ...)
    hccn_tool -i 0 -ip -g          →  ipaddr:192.168.100.101
                                      netmask:255.255.255.0

Device ids here are physical NPU ids, as `hccn_tool -i`, `address_N` in hccn.conf and HCCL's rank table
`device_id` name them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sknet.config import Config
from sknet.errors import SknetError
from sknet.launch.ranktable import VISIBLE_DEVICES_ENV, load_rank_table, read_hccn_conf, visible_devices
from sknet.preflight.runner import Context, Failed, Outcome, Skip
from sknet.preflight.tools import find_tool, shown, tool_output

LINK_UP = "UP"
NET_HEALTHY = "Success"
# Within one server HCCL goes over HCCS or PCIe on an Atlas 800 (910) and an Atlas A2 (910B), and over the NPUs'
# RoCE NICs only when HCCL_INTRA_ROCE_ENABLE=1 (CANN HCCL environment variables, HCCL_INTRA_ROCE_ENABLE: "Atlas
# training products and Atlas A2 training products … intra-server communication", default PCIe). So the NICs'
# link and health matter to a job that spans servers, or that asks for RoCE inside one.
INTRA_ROCE_ENV = "HCCL_INTRA_ROCE_ENABLE"


@dataclass(frozen=True)
class PlannedDevice:
    device: int  # physical NPU id
    rank: int | None  # the global rank that uses it (None: msrun assigns the ranks)
    table_ip: str | None  # its device_ip in the rank table, when there is one

    @property
    def label(self) -> str:
        return f"device {self.device}" + (f" (rank {self.rank})" if self.rank is not None else "")


def _table_devices(cfg: Config) -> tuple[list[PlannedDevice], str]:
    """This host's entry of `launch.rank_table`: its devices, ranks and device IPs."""
    from sknet.launch.ranks import host_addresses, this_server

    path = Path(cfg.launch.rank_table).resolve()
    try:
        server = this_server(load_rank_table(path), cfg.launch.server_id, host_addresses(), str(path))
    except SknetError as exc:
        raise Failed(f"cannot tell which devices this host's ranks use: {exc}") from None
    return [PlannedDevice(int(d["device_id"]), int(d["rank_id"]), d["device_ip"]) for d in server["device"]], str(path)


def _visible_devices(count: int) -> list[int]:
    """The physical NPUs behind logical ids 0..count-1 (`ASCEND_VISIBLE_DEVICES`, else the identity)."""
    try:
        visible = visible_devices()
    except SknetError as exc:
        raise Failed(f"cannot tell which devices this host's ranks use: {exc}") from None
    visible = list(range(count)) if visible is None else visible
    if len(visible) < count:
        raise Failed(f"{count} local rank(s), but {VISIBLE_DEVICES_ENV}={os.environ.get(VISIBLE_DEVICES_ENV)} "
                     f"makes only {len(visible)} NPU(s) visible")
    return visible[:count]


def planned_devices(cfg: Config) -> tuple[list[PlannedDevice], str | None]:
    """(the NPUs this host's ranks use, the rank table they come from or None)."""
    if cfg.train.device_target != "Ascend":
        raise Skip(f"train.device_target={cfg.train.device_target}: this run uses no NPU")
    if cfg.launch.rank_table:
        return _table_devices(cfg)
    if cfg.launch.backend != "msrun":
        raise Failed(f"cannot tell which devices this host's ranks use: launch.backend={cfg.launch.backend} "
                     "needs launch.rank_table (make one with `sknet ranktable`)")
    local = cfg.launch.ranks // cfg.launch.nodes  # msrun binds local rank i to visible device i
    return [PlannedDevice(device, None, None) for device in _visible_devices(local)], None


def query(tool: str, device: int, option: str, pattern: str, expected: str) -> str:
    """`hccn_tool -i DEVICE OPTION -g`, the value `pattern` captures; `Failed` quoting the output otherwise."""
    args = ("-i", str(device), option, "-g")
    text = tool_output(tool, *args)
    match = re.search(pattern, text)
    if not match:
        raise Failed(f"`hccn_tool {' '.join(args)}` printed {shown(text)!r}, expected {expected!r}")
    return match.group(1).strip()


def _link_problems(tool: str, device: PlannedDevice) -> list[str]:
    n = device.device
    try:
        link = query(tool, n, "-link", r"link status:\s*(\S+)", "link status: UP")
        health = query(tool, n, "-net_health", r"net health status:\s*(.+)", "net health status: Success")
    except Failed as exc:
        return [f"{device.label}: {exc}"]
    problems = []
    if link.upper() != LINK_UP:
        problems.append(f"{device.label}: link {link} (hccn_tool -i {n} -link -g), expected {LINK_UP}: "
                        "check the NIC's cable or optical module and its switch port")
    if health != NET_HEALTHY:
        hint = (f": no detection address is set (hccn_tool -i {n} -netdetect -s address <a reachable IP>)"
                if health == "Init" else "")
        problems.append(f"{device.label}: net health {health} (hccn_tool -i {n} -net_health -g), "
                        f"expected {NET_HEALTHY}{hint}")
    return problems


def spans_servers(cfg: Config) -> bool:
    """Whether the job's collectives cross servers: several msrun nodes, or a rank table of several servers."""
    if cfg.launch.backend == "msrun":
        return cfg.launch.nodes > 1
    if cfg.launch.rank_table and Path(cfg.launch.rank_table).is_file():
        try:
            return len(load_rank_table(cfg.launch.rank_table)["server_list"]) > 1
        except SknetError:
            return True  # the launch-plan check names the table's problem; check the links meanwhile
    return False


def check_device_links(ctx: Context) -> Outcome:
    """Every planned device: `link status: UP` and `net health status: Success`, when its NIC carries the job's
    traffic (the job spans servers, or HCCL_INTRA_ROCE_ENABLE=1)."""
    devices, _ = planned_devices(ctx.cfg)
    if not spans_servers(ctx.cfg) and os.environ.get(INTRA_ROCE_ENV) != "1":
        raise Skip(f"one server: HCCL runs over HCCS/PCIe inside a server, not the device NICs (unless "
                   f"{INTRA_ROCE_ENV}=1), so their link and net health do not affect this job")
    tool = find_tool("hccn_tool")
    problems = [problem for device in devices for problem in _link_problems(tool, device)]
    if problems:
        raise Failed("\n".join(problems))
    ids = ", ".join(str(d.device) for d in devices)
    return Outcome(f"device(s) {ids}: link {LINK_UP}, net health {NET_HEALTHY}")


def _ip_sources(tool: str, device: PlannedDevice, conf: dict[int, str] | None, ctx: Context,
                table: str | None) -> tuple[dict[str, str], list[str]]:
    """({source: IP} for one device, problems reading them)."""
    n, sources, problems = device.device, {}, []
    try:
        sources[f"hccn_tool -i {n} -ip -g"] = query(tool, n, "-ip", r"ipaddr:\s*(\S+)", "ipaddr:<IP>")
    except Failed as exc:
        problems.append(f"{device.label}: {exc}")
    if conf is not None:
        if n in conf:
            sources[f"{ctx.hccn_conf} (address_{n})"] = conf[n]
        else:
            problems.append(f"{device.label}: {ctx.hccn_conf} has no address_{n} line")
    if device.table_ip is not None:
        sources[f"rank table {table}"] = device.table_ip
    return sources, problems


def check_device_ips(ctx: Context) -> Outcome:
    """Every planned device: one IP whether asked of hccn_tool, read from hccn.conf or from the rank table."""
    devices, table = planned_devices(ctx.cfg)
    tool = find_tool("hccn_tool")
    problems, conf, agreed = [], None, {}
    try:
        conf = read_hccn_conf(ctx.hccn_conf)
    except SknetError as exc:
        problems.append(str(exc))
    for device in devices:
        sources, read_problems = _ip_sources(tool, device, conf, ctx, table)
        problems += read_problems
        if not sources:
            continue
        (first, ip), *others = sources.items()
        problems += [f"{device.label}: {first} gives {ip}, but {name} gives {other}"
                     for name, other in others if other != ip]
        agreed[device.device] = ip
    if problems:
        raise Failed("\n".join(problems), {"ips": agreed})
    names = "hccn_tool, " + str(ctx.hccn_conf) + (" and the rank table" if table else "")
    listing = ", ".join(f"{n}={ip}" for n, ip in agreed.items())
    return Outcome(f"{names} agree: {listing}", {"ips": agreed})
