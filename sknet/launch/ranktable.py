"""HCCL rank tables (format v1.0) for Ascend 910 servers.

One table lists, per server, each device's id, its NIC IP (from `hccn_tool -i N -ip -g` or
`/etc/hccn.conf` lines `address_N=IP`) and its global rank. A table's `device_id` is the PHYSICAL NPU id
(HCCL's definition; the model zoo's hccl_tools writes the physical ids of `--visible_devices`); a
process's DEVICE_ID is its LOGICAL id, its index among the NPUs it can see. They differ in a container:
the Ascend Docker runtime and the k8s device plugin expose the physical NPUs named in
ASCEND_VISIBLE_DEVICES (e.g. 4-7), which the processes inside see as 0-3 (ascending physical order).
Without that variable the two ids are the same.

On an Ascend 910 (910A) server the eight NPUs form two HCCS groups, 0-3 and 4-7: a job takes 1, 2 or 4
devices within one group, or all eight. An Atlas A2 (910B) server connects all eight: any set of its
devices may form a job (CANN HCCL docs).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from sknet.errors import SknetError

DEVICES_PER_SERVER = 8
HCCS_GROUPS = (range(0, 4), range(4, 8))  # Ascend 910 (910A); the 910B has no such split
HCCS_JOB_SIZES = (1, 2, 4, 8)  # devices per job an Ascend 910 server's HCCS allows
VISIBLE_DEVICES_ENV = "ASCEND_VISIBLE_DEVICES"  # physical NPUs of this container (Ascend Docker runtime, k8s)
CHIPS = ("910", "910B")
HCCN_CONF = Path("/etc/hccn.conf")
_ADDRESS = re.compile(r"^address_(\d+)\s*=\s*(\S+)$")
_NAMED_DEVICE = re.compile(r"Ascend\w+-(\d+)")  # ASCEND_VISIBLE_DEVICES=Ascend910-4,Ascend910-5
_DEVICE_SPAN = re.compile(r"(\d+)(?:-(\d+))?")  # 4 or 4-7
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # a rank table's id: ASCII digits, no sign, space or leading zero
MAX_TABLE_BYTES = 16 * 2**20  # ~100k devices at v1.0's ~150 bytes each; a table is read whole


class RankTableError(SknetError):
    """Bad device range, missing or malformed device-IP source, or an invalid table."""


def parse_devices(spec: str) -> list[int]:
    """`0-7`, `4-7`, `0-1` or `3` → device ids; at most 8, ids 0..7, contiguous."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
    if not match:
        raise RankTableError(f"--devices {spec!r}: expected a range like 0-7, 4-7 or a single id like 3")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if first > last or last >= DEVICES_PER_SERVER:
        raise RankTableError(
            f"--devices {spec!r}: expected ids within 0-{DEVICES_PER_SERVER - 1}, first ≤ last"
        )
    return list(range(first, last + 1))


def parse_visible_devices(spec: str, source: str = "--visible-devices") -> list[int]:
    """Physical NPU ids as the Ascend Docker runtime reads ASCEND_VISIBLE_DEVICES: `4,5,6,7`, `4-7`,
    `0-2,4` or `Ascend910-4,Ascend910-5` (`void`: none), sorted: index i is logical id i."""
    spec = spec.strip()
    if spec == "void":
        return []
    ids: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        named, span = _NAMED_DEVICE.fullmatch(part), _DEVICE_SPAN.fullmatch(part)
        first, last = (int(span.group(1)), int(span.group(2) or span.group(1))) if span else (0, -1)
        if named:
            ids.append(int(named.group(1)))
        elif first <= last:
            ids.extend(range(first, last + 1))
        else:
            raise RankTableError(f"{source}={spec!r}: {part!r} is not a device; expected physical NPU ids like "
                                 "4,5,6,7, ranges like 4-7, or names like Ascend910-4")
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise RankTableError(f"{source}={spec!r}: device(s) {repeated} listed more than once")
    return sorted(ids)


def visible_devices(override: str | None = None, environ: Mapping[str, str] | None = None) -> list[int] | None:
    """This host's visible physical NPUs in logical order: `override` (--visible-devices), else
    ASCEND_VISIBLE_DEVICES, else None (no remapping: logical id == physical id)."""
    environ = os.environ if environ is None else environ
    if override:
        return parse_visible_devices(override)
    if environ.get(VISIBLE_DEVICES_ENV, "").strip():
        return parse_visible_devices(environ[VISIBLE_DEVICES_ENV], VISIBLE_DEVICES_ENV)
    return None


def physical_devices(devices: Sequence[int], visible: Sequence[int] | None, chip: str = "910") -> list[int]:
    """Map logical ids (as the processes see them) to physical NPUs; check the chip's HCCS rule on those."""
    if chip not in CHIPS:
        raise RankTableError(f"--chip {chip!r}: expected one of {', '.join(CHIPS)}")
    visible = list(range(DEVICES_PER_SERVER)) if visible is None else list(visible)
    shown = ",".join(map(str, visible)) or "none"
    if not devices:
        raise RankTableError(f"no devices to put in the table (visible physical devices: {shown})")
    if max(devices) >= len(visible):
        raise RankTableError(f"device {max(devices)} is not visible: only {len(visible)} visible devices ({shown})")
    physical = [visible[d] for d in devices]
    if max(physical) >= DEVICES_PER_SERVER:
        raise RankTableError(f"physical device {max(physical)}: expected ids within 0-{DEVICES_PER_SERVER - 1}")
    if (problem := server_topology_problem(chip, physical)) is not None:
        raise RankTableError(f"{problem} (an Atlas A2 / 910B server has no such rule: --chip 910B)"
                             if chip == "910" else problem)
    return physical


def server_topology_problem(chip: str, physical: Sequence[int]) -> str | None:
    """Why one server's physical devices cannot be one job on `chip` (None: they can).

    Ascend 910 (Atlas 800 training server): the eight NPUs form two HCCS rings, 0-3 and 4-7, and collective
    communication takes 1, 2 or 4 devices within one ring, or all eight (Huawei, CANN TensorFlow migration guide,
    distributed training "Precautions", Atlas Training Series). Ascend 910B (Atlas 800T A2): the eight NPUs are
    fully connected, any set of them."""
    if len(physical) > DEVICES_PER_SERVER:
        return f"{len(physical)} devices on one server: an Ascend {chip} server has {DEVICES_PER_SERVER} NPUs"
    if chip != "910":
        return None
    shown = list(physical)
    if len(physical) not in HCCS_JOB_SIZES:
        return (f"{len(physical)} devices {shown}: an Ascend 910 server's HCCS runs jobs of 1, 2, 4 or 8 devices "
                "(within one group 0-3 / 4-7, or all eight)")
    if len(physical) < DEVICES_PER_SERVER and not any(set(physical) <= set(g) for g in HCCS_GROUPS):
        return (f"physical devices {shown} cross the HCCS groups 0-3 / 4-7 of an Ascend 910: use devices within "
                "one group, or all 0-7")
    return None


def read_hccn_conf(path: str | Path = HCCN_CONF) -> dict[int, str]:
    """Device → NIC IP from an hccn.conf (`address_N=IP`; other keys such as netmask_N are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise RankTableError(
            f"{path} not found: expected the HCCN config with lines address_<device>=<ip> "
            "(written by hccn_tool on Ascend hosts); pass --hccn-conf FILE"
        )
    addresses = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or not line.startswith("address_"):
            continue
        match = _ADDRESS.match(line)
        if not match or not _is_ip(match.group(2)):
            raise RankTableError(f"{path}:{number}: {line!r} is malformed; expected address_<device>=<IPv4 address>")
        addresses[int(match.group(1))] = match.group(2)
    if not addresses:
        raise RankTableError(f"{path}: no address_<device>=<ip> lines found")
    return addresses


def query_hccn_tool(devices: Sequence[int], tool: str = "hccn_tool") -> dict[int, str]:
    """Device → NIC IP by asking `hccn_tool -i N -ip -g` (prints `ipaddr:IP`)."""
    executable = shutil.which(tool)
    if executable is None:
        raise RankTableError(
            f"{tool} not found on PATH: it ships with the Ascend driver (usually /usr/local/Ascend/driver/tools); "
            "or pass --hccn-conf /etc/hccn.conf"
        )
    addresses = {}
    for device in devices:
        proc = subprocess.run([executable, "-i", str(device), "-ip", "-g"], capture_output=True, text=True)
        match = re.search(r"ipaddr:\s*(\S+)", proc.stdout)
        if proc.returncode != 0 or not match:
            raise RankTableError(
                f"{tool} -i {device} -ip -g failed (exit {proc.returncode}): "
                f"{proc.stdout.strip() or proc.stderr.strip()}"
            )
        addresses[device] = match.group(1)
    return addresses


def build_rank_table(device_ips: Mapping[int, str], devices: Sequence[int], server_ip: str,
                     visible: Sequence[int] | None = None, chip: str = "910") -> dict:
    """A one-server table for the logical `devices`; it names their PHYSICAL NPUs (`visible[d]`, identity
    without `visible`). `device_ips` is keyed by physical device id."""
    physical = physical_devices(devices, visible, chip)
    missing = [p for p in physical if p not in device_ips]
    if missing:
        raise RankTableError(f"no IP for physical device(s) {missing} in the HCCN source")
    if not _is_ip(server_ip):
        raise RankTableError(f"--server-ip {server_ip!r}: expected an IPv4 address")
    return {
        "version": "1.0",
        "server_count": "1",
        "server_list": [{
            "server_id": server_ip,
            "device": [
                {"device_id": str(p), "device_ip": device_ips[p], "rank_id": str(rank)}
                for rank, p in enumerate(physical)
            ],
            "host_nic_ip": "reserve",
        }],
        "status": "completed",
    }


def merge_rank_tables(tables: Sequence[dict]) -> dict:
    """Several servers' tables in one; rank ids continue across servers in the given order."""
    servers, rank = [], 0
    for table in tables:
        validate_rank_table(table)
        for server in table["server_list"]:
            if any(s["server_id"] == server["server_id"] for s in servers):
                raise RankTableError(f"server {server['server_id']} appears in more than one table")
            devices = []
            for device in server["device"]:
                devices.append({**device, "rank_id": str(rank)})
                rank += 1
            servers.append({**server, "device": devices})
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": servers, "status": "completed"}


def validate_rank_table(table: object, source: str = "rank table") -> None:
    """Refuse, before anything starts, a table HCCL could not run, naming `source` (the file), the server and
    device, and what was expected: v1.0's shape; ids as strings of ASCII digits (v1.0 writes strings; `int()`
    also takes ' 3', '+3', '3_0' and '٣'); each server once; device ids within 0..DEVICES_PER_SERVER-1, each once
    per server; each device IP once; rank ids exactly 0..size-1."""
    servers = _check_header(table, source)
    ranks: dict[int, str] = {}  # rank id → the device that has it
    ips: dict[str, str] = {}  # device IP → the device that has it
    server_ids: dict[str, str] = {}  # server id → its place in server_list
    for index, server in enumerate(servers):
        where = _check_server(server, index, server_ids, source)
        device_ids: dict[int, str] = {}
        for number, device in enumerate(server["device"]):
            _check_device(device, f"{where}, device[{number}]", source, device_ids, ips, ranks)
    size = len(ranks)
    if outside := sorted(rank for rank in ranks if rank >= size):  # unique, ≥ 0 and none ≥ size: 0..size-1
        raise RankTableError(f"{source}: {ranks[outside[0]]}: rank_id '{outside[0]}' is outside 0..{size - 1}: the "
                             f"table lists {size} device(s), so its rank ids must be exactly 0..{size - 1}, each once")


def _check_header(table: object, source: str) -> list:
    """The table's server_list, once version, status and server_count are v1.0's."""
    if not isinstance(table, dict):
        raise RankTableError(f"{source}: expected a JSON object (a v1.0 rank table), got {type(table).__name__}")
    if table.get("version") != "1.0" or table.get("status") != "completed":
        raise RankTableError(f"{source}: version {table.get('version')!r}, status {table.get('status')!r}: expected "
                             "version '1.0' and status 'completed'")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise RankTableError(f"{source}: server_list {servers!r:.80}: expected a non-empty list of servers")
    if table.get("server_count") != str(len(servers)):
        raise RankTableError(f"{source}: server_count {table.get('server_count')!r}: expected '{len(servers)}' (the "
                             "number of servers in server_list, as a string)")
    return servers


def _check_server(server: object, index: int, seen: dict[str, str], source: str) -> str:
    """Where `server` (server_list[index]) is, for messages, once it is an object listed once with devices."""
    if not isinstance(server, dict):
        raise RankTableError(f"{source}: server_list[{index}]: expected an object with server_id and device")
    server_id = server.get("server_id")
    if not isinstance(server_id, str) or not server_id.strip():
        raise RankTableError(f"{source}: server_list[{index}]: server_id {server_id!r}: expected the server's "
                             "address as a string, e.g. '10.0.0.1'")
    if server_id in seen:
        raise RankTableError(f"{source}: server {server_id} (server_list[{index}]) is listed again (first as "
                             f"{seen[server_id]}); expected each server once, with all its devices")
    seen[server_id] = f"server_list[{index}]"
    if not isinstance(server.get("device"), list) or not server["device"]:
        raise RankTableError(f"{source}: server {server_id}: device: expected a non-empty list of devices")
    return f"server {server_id}"


def _check_device(device: object, where: str, source: str, device_ids: dict[int, str], ips: dict[str, str],
                  ranks: dict[int, str]) -> None:
    """One device entry: its ids and IP well formed, none taken by an earlier device (recorded in the dicts)."""
    if not isinstance(device, dict):
        raise RankTableError(f"{source}: {where}: expected an object with device_id, device_ip and rank_id")
    _once(device_ids, _table_id(device, "device_id", where, source, DEVICES_PER_SERVER), where, source,
          "device_id", "each device of a server once")
    ip = device.get("device_ip")
    if not isinstance(ip, str) or not _is_ip(ip):
        raise RankTableError(f"{source}: {where}: device_ip {ip!r}: expected an IPv4 address (the NPU's NIC, "
                             "hccn.conf's address_N)")
    _once(ips, ip, where, source, "device_ip", "one NIC address per device")
    _once(ranks, _table_id(device, "rank_id", where, source), where, source, "rank_id", "each rank once")


def _table_id(device: dict, key: str, where: str, source: str, limit: int | None = None) -> int:
    """`device[key]` as an int, if it is a string of ASCII digits (below `limit`)."""
    value = device.get(key)
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or (limit and int(value) >= limit):
        within = f" within 0..{limit - 1} (the NPUs of a server)" if limit else ""
        raise RankTableError(f"{source}: {where}: {key} {value!r}: expected a string of ASCII digits{within}, e.g. "
                             "'3' (v1.0 writes ids as strings)")
    return int(value)


def _once(seen: dict, key: object, where: str, source: str, field: str, expected: str) -> None:
    """Record `key` as `where`'s; refuse one an earlier device has, naming both."""
    if key in seen:
        raise RankTableError(f"{source}: {where}: {field} '{key}' repeats that of {seen[key]}; expected {expected}")
    seen[key] = where


def load_rank_table(path: str | Path) -> dict:
    """The rank table in the JSON file `path`, validated (`validate_rank_table`); refused when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise RankTableError(f"rank table {path} does not exist")
    if (size := path.stat().st_size) > MAX_TABLE_BYTES:
        raise RankTableError(f"{path}: {size:,} bytes: expected a rank table of at most {MAX_TABLE_BYTES:,} bytes")
    try:
        table = json.loads(path.read_bytes())
    except RecursionError:
        raise RankTableError(f"{path}: nested too deeply to be a rank table (v1.0 nests 4 levels)") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not text
        raise RankTableError(f"{path}: not valid JSON ({exc})") from None
    validate_rank_table(table, str(path))
    return table


def write_rank_table(table: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=4) + "\n")
    return out


def default_server_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def rank_size(table: dict) -> int:
    return sum(len(s["device"]) for s in table["server_list"])


def _is_ip(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False
