"""Which processes a launch starts on this host, and with what environment.

- `cpu`: a scheduler plus one worker per rank (MindSpore's dynamic cluster over `mccl`), all on this host; one
  rank alone is one process that joins no group (as `sknet train` and a one-device Ascend run do): a scheduler
  and a group of one would cost it a process and ≈ 4 s of start-up, and all-reduce nothing.
- `ascend`: one process per device of THIS host's entry in the HCCL rank table. The table's `device_id` is
  the PHYSICAL NPU; the process's DEVICE_ID is its LOGICAL id, the index of that NPU among this host's
  visible ones (ASCEND_VISIBLE_DEVICES, set by the Ascend Docker runtime and the k8s device plugin; without
  it, logical == physical). RANK_ID is the device's global `rank_id`, RANK_SIZE the table's size. In a
  merged table each host starts only its own ranks.
- `msrun`: one msrun process per node; msrun starts this node's ranks and assigns their devices.

`ascend` and `msrun` processes also get the HCCL timeouts below, unless the launcher's environment sets them.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sknet.config import Config
from sknet.errors import LaunchError
from sknet.launch.ranktable import VISIBLE_DEVICES_ENV, load_rank_table, rank_size, visible_devices

SCHEDULER = "sched"
MSRUN = "msrun"
SCHEDULER_TOPOLOGY_TIMEOUT = "120"  # seconds the cpu ranks wait for each other to join
HCCL_TIMEOUTS = {  # seconds; for the ascend and msrun backends, unless the launcher's environment sets them
    # Socket link setup between ranks (CANN: 120-7200, default 120; MindSpore raises an unset one to 600 on
    # import). Eight ranks reach it after compiling SKNet-50 side by side on shared host CPUs, minutes apart;
    # 20 min absorbs that, and costs nothing when a rank dies: the launcher then stops every rank at once.
    "HCCL_CONNECT_TIMEOUT": "1200",
    # A running collective waiting for a peer (CANN default 1836; on a 910 it is floored to a multiple of 68
    # within (0, 17340]; at most 1091 in an A2/A3's AIV mode). 612 = 9 x 68 means the same on every chip: far
    # above any in-run wait (rank 0's checkpoint save takes seconds), and a hung collective fails ~20 min
    # sooner than by default, well within launch.timeout_minutes.
    "HCCL_EXEC_TIMEOUT": "612",
}


class LaunchPlanError(LaunchError):
    """The launch settings cannot work on this host (checked before anything starts)."""


@dataclass(frozen=True)
class RankProcess:
    name: str  # the global rank ("0", "1", …), "sched" or "msrun"
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment
    device_id: int | None = None  # the LOGICAL id the process binds (its DEVICE_ID)
    physical_device_id: int | None = None  # the rank table's device_id: the NPU on the server
    ranks: tuple[int, ...] = ()  # the global ranks this process runs (msrun: all of this node's)


def host_addresses() -> set[str]:
    """This host's IPv4 addresses (every interface), plus its hostname's."""
    import psutil

    found = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET}
    try:
        found.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    return found


def this_server(table: dict, server_id: str, addresses: set[str], source: str) -> dict:
    """This host's entry of a rank table: the one named `server_id`, else the one at an address of this host."""
    servers = {s["server_id"]: s for s in table["server_list"]}
    if server_id:
        if server_id not in servers:
            raise LaunchPlanError(f"launch.server_id={server_id} is not in rank table {source} "
                                  f"(servers: {', '.join(servers)})")
        return servers[server_id]
    mine = [s for sid, s in servers.items() if sid in addresses]
    if len(mine) != 1:
        raise LaunchPlanError(
            f"this host ({', '.join(sorted(addresses)) or 'no IPv4 address'}) is "
            f"{'not' if not mine else 'more than once'} in rank table {source} (servers: {', '.join(servers)}); "
            "run on a listed server, or set launch.server_id")
    return mine[0]


def check_multi_node(cfg: Config) -> None:
    """Several nodes are one job: a master every node can reach, on a port every node knows."""
    launch = cfg.launch
    if launch.nodes == 1:
        return
    if launch.backend != "msrun":
        raise LaunchPlanError(f"launch.nodes={launch.nodes} needs launch.backend=msrun (the ascend backend takes "
                              f"its servers from the rank table; cpu runs on one host)")
    if launch.ranks % launch.nodes:
        raise LaunchPlanError(f"launch.ranks={launch.ranks} is not divisible by launch.nodes={launch.nodes}")
    if not 0 <= launch.node_rank < launch.nodes:
        raise LaunchPlanError(f"launch.node_rank={launch.node_rank}: expected 0 … {launch.nodes - 1}")
    if _is_loopback(launch.master_addr):
        raise LaunchPlanError(f"launch.nodes={launch.nodes} with launch.master_addr={launch.master_addr}: set the "
                              "address of node 0 that every node can reach (not loopback)")
    if launch.master_port == 0:
        raise LaunchPlanError(f"launch.nodes={launch.nodes} needs a fixed launch.master_port (0 picks a free port "
                              "on each node, so the nodes would never meet), e.g. launch.master_port=8118")


def plan_processes(cfg: Config, port: int | str, addresses: set[str] | None = None,
                   environ: Mapping[str, str] | None = None) -> list[RankProcess]:
    """The processes this host starts for `cfg`; `port` is the scheduler's (msrun's master) port, `environ`
    the launcher's environment (default `os.environ`)."""
    check_multi_node(cfg)
    environ = os.environ if environ is None else environ
    if cfg.launch.backend == "cpu":
        return _cpu_processes(cfg.launch.ranks, str(port))
    if cfg.launch.backend == "ascend":
        return _ascend_processes(cfg, host_addresses() if addresses is None else addresses, environ)
    local = cfg.launch.ranks // cfg.launch.nodes
    first = cfg.launch.node_rank * local
    return [RankProcess(MSRUN, hccl_env(environ), ranks=tuple(range(first, first + local)))]


def hccl_env(environ: Mapping[str, str]) -> dict[str, str]:
    """HCCL_TIMEOUTS, less those the launcher's environment sets (an operator's value wins)."""
    return {key: value for key, value in HCCL_TIMEOUTS.items() if key not in environ}


def _cpu_processes(ranks: int, port: str) -> list[RankProcess]:
    if ranks == 1:
        return [RankProcess("0", {"RANK_ID": "0"}, ranks=(0,))]
    common = {"MS_WORKER_NUM": str(ranks), "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": port,
              "MS_TOPO_TIMEOUT": SCHEDULER_TOPOLOGY_TIMEOUT}
    scheduler = RankProcess(SCHEDULER, {**common, "MS_ROLE": "MS_SCHED", "RANK_ID": "0"})
    workers = [RankProcess(str(rank), {**common, "MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank),
                                       "RANK_ID": str(rank)}, ranks=(rank,)) for rank in range(ranks)]
    return [scheduler, *workers]


def _ascend_processes(cfg: Config, addresses: set[str], environ: Mapping[str, str]) -> list[RankProcess]:
    if not cfg.launch.rank_table:
        raise LaunchPlanError("launch.backend=ascend needs launch.rank_table (make one with `sknet ranktable`)")
    path = Path(cfg.launch.rank_table).resolve()
    if not path.is_file():
        raise LaunchPlanError(f"launch.rank_table {cfg.launch.rank_table} does not exist")
    table = load_rank_table(path)
    size = rank_size(table)
    if cfg.launch.ranks != size:
        raise LaunchPlanError(f"launch.ranks={cfg.launch.ranks}, but rank table {path} lists {size} devices "
                              f"across {len(table['server_list'])} server(s); they must be equal")
    server = this_server(table, cfg.launch.server_id, addresses, str(path))
    visible = visible_devices(environ=environ)
    common = {"RANK_SIZE": str(size), "RANK_TABLE_FILE": str(path), **hccl_env(environ)}
    processes = []
    for device in server["device"]:
        rank, physical = device["rank_id"], int(device["device_id"])
        logical = _logical_device(physical, visible, path, environ)
        processes.append(RankProcess(rank, {"DEVICE_ID": str(logical), "RANK_ID": rank, **common},
                                     device_id=logical, physical_device_id=physical, ranks=(int(rank),)))
    return processes


def _logical_device(physical: int, visible: list[int] | None, table: Path, environ: Mapping[str, str]) -> int:
    """The id a process on this host binds for the table's physical NPU: its index among the visible ones."""
    if visible is None:
        return physical
    if physical not in visible:
        raise LaunchPlanError(
            f"rank table {table} gives device_id {physical} (a physical NPU) to this host, but it is not visible "
            f"here: {VISIBLE_DEVICES_ENV}={environ[VISIBLE_DEVICES_ENV]} (physical NPUs "
            f"{', '.join(map(str, visible)) or 'none'}); write the table for this host's NPUs (`sknet ranktable` "
            f"reads {VISIBLE_DEVICES_ENV}) or give the container that NPU")
    return visible.index(physical)


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: resolved by msrun on each node
