"""HCCL rank tables against golden files written from the v1.0 format, not by this code."""

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import run_sknet
from sknet.launch.ranktable import (
    RankTableError,
    build_rank_table,
    load_rank_table,
    merge_rank_tables,
    parse_devices,
    parse_visible_devices,
    physical_devices,
    query_hccn_tool,
    read_hccn_conf,
)

GOLDEN = Path(__file__).parent / "golden"
SERVER1_IPS = {0: "192.168.100.101", 1: "192.168.101.101", 2: "192.168.102.101", 3: "192.168.103.101",
               4: "192.168.100.100", 5: "192.168.101.100", 6: "192.168.102.100", 7: "192.168.103.100"}  # its hccn.conf


@pytest.fixture(autouse=True)
def _bare_metal(monkeypatch):
    """No container mapping unless a test sets one (a CI runner inside an Ascend container would have it)."""
    monkeypatch.delenv("ASCEND_VISIBLE_DEVICES", raising=False)


def devices_of(table: dict) -> list[tuple[str, str, str]]:
    return [(d["device_id"], d["device_ip"], d["rank_id"]) for d in table["server_list"][0]["device"]]


def golden(name):
    return json.loads((GOLDEN / f"ranktable-{name}.json").read_text())


def cli_table(tmp_path, *args):
    out = tmp_path / "table.json"
    run_sknet("ranktable", *args, "--out", str(out))
    return json.loads(out.read_text())


def test_one_server_eight_devices(tmp_path):
    table = cli_table(tmp_path, "--hccn-conf", str(GOLDEN / "hccn-server1.conf"), "--devices", "0-7",
                      "--server-ip", "10.0.0.1")
    assert table == golden("1x8")


def test_a_table_names_the_physical_npus_behind_the_ids_the_ranks_see(tmp_path):
    table = cli_table(tmp_path, "--hccn-conf", str(GOLDEN / "hccn-server1.conf"), "--devices", "0-3",
                      "--visible-devices", "4,5,6,7", "--server-ip", "10.0.0.1")
    assert devices_of(table) == [(str(p), SERVER1_IPS[p], str(rank)) for rank, p in enumerate(range(4, 8))]
    assert table == golden("1x4-visible-4-7")


def test_ascend_visible_devices_gives_the_physical_npus_and_the_default_device_set(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_VISIBLE_DEVICES", "4-7")  # what the Ascend Docker runtime sets in the container
    table = cli_table(tmp_path, "--hccn-conf", str(GOLDEN / "hccn-server1.conf"), "--server-ip", "10.0.0.1")
    assert [d[0] for d in devices_of(table)] == ["4", "5", "6", "7"]


def test_visible_devices_flag_overrides_ascend_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_VISIBLE_DEVICES", "0,1,2,3")
    table = cli_table(tmp_path, "--hccn-conf", str(GOLDEN / "hccn-server1.conf"), "--devices", "0-1",
                      "--visible-devices", "4,5,6,7", "--server-ip", "10.0.0.1")
    assert [d[0] for d in devices_of(table)] == ["4", "5"]


@pytest.mark.parametrize("spec", ["4,5,6,7", "4-7", "4-5,6,7", "Ascend910-4,Ascend910-5,Ascend910-6,Ascend910-7",
                                  "7,6,5,4"])
def test_visible_devices_are_read_in_every_form_the_docker_runtime_takes(spec):
    assert parse_visible_devices(spec, "ASCEND_VISIBLE_DEVICES") == [4, 5, 6, 7]
    assert parse_visible_devices("void", "ASCEND_VISIBLE_DEVICES") == []


@pytest.mark.parametrize("spec, message", [
    ("4,x", r"ASCEND_VISIBLE_DEVICES='4,x': 'x' is not a device"),
    ("7-4", r"ASCEND_VISIBLE_DEVICES='7-4': '7-4' is not a device"),
    ("4,4-5", r"ASCEND_VISIBLE_DEVICES='4,4-5': device\(s\) \[4\] listed more than once"),
])
def test_malformed_visible_devices_name_the_variable_and_value(spec, message):
    with pytest.raises(RankTableError, match=message):
        parse_visible_devices(spec, "ASCEND_VISIBLE_DEVICES")


@pytest.mark.parametrize("devices, visible", [("0-2", list(range(8))), ("5-7", list(range(8))),
                                              ("0-2", [4, 5, 6, 7])])
def test_an_ascend_910_job_of_other_than_1_2_4_or_8_devices_is_refused(devices, visible):
    with pytest.raises(RankTableError,
                       match=r"3 devices \[.*\]: an Ascend 910 server's HCCS runs jobs of 1, 2, 4 or 8 devices"):
        physical_devices(parse_devices(devices), visible)


@pytest.mark.parametrize("devices, physical", [("3", [3]), ("6-7", [6, 7]), ("4-7", [4, 5, 6, 7]),
                                               ("0-7", list(range(8)))])
def test_an_ascend_910_job_of_1_2_4_or_8_devices_in_one_group_is_accepted(devices, physical):
    assert physical_devices(parse_devices(devices), list(range(8))) == physical


def test_two_servers_merged_continue_rank_ids(tmp_path):
    first = cli_table(tmp_path, "--hccn-conf", str(GOLDEN / "hccn-server1.conf"), "--server-ip", "10.0.0.1")
    (tmp_path / "a.json").write_text(json.dumps(first))
    second = build_rank_table(read_hccn_conf(GOLDEN / "hccn-server2.conf"), range(8), "10.0.0.2")
    (tmp_path / "b.json").write_text(json.dumps(second))
    merged = cli_table(tmp_path, "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert merged == golden("2x8-merged")


@pytest.mark.parametrize("spec", ["0-8", "3-1", "8", "a-b", "0-3,5", ""])
def test_invalid_device_ranges_are_rejected(spec):
    with pytest.raises(RankTableError, match=r"--devices"):
        parse_devices(spec)


@pytest.mark.parametrize("devices", ["2-5", "3-4", "3-6"])
def test_ranges_crossing_the_hccs_groups_are_rejected_unless_all_eight(devices):
    with pytest.raises(RankTableError, match="cross the HCCS groups 0-3 / 4-7"):
        physical_devices(parse_devices(devices), list(range(8)))
    assert physical_devices(parse_devices("0-7"), list(range(8))) == list(range(8))


@pytest.mark.parametrize("devices", ["2-5", "3-4", "1-6", "0-2"])
def test_a_910b_server_takes_any_range_of_its_devices(devices, tmp_path):
    table = cli_table(tmp_path, "--hccn-conf", str(GOLDEN / "hccn-server1.conf"), "--devices", devices,
                      "--chip", "910B", "--server-ip", "10.0.0.1")
    ids = [int(d["device_id"]) for d in table["server_list"][0]["device"]]
    assert ids == parse_devices(devices) and [d["rank_id"] for d in table["server_list"][0]["device"]] == [
        str(r) for r in range(len(ids))]


def test_an_unknown_chip_is_refused():
    with pytest.raises(RankTableError, match="--chip '310P': expected one of 910, 910B"):
        physical_devices([0], list(range(8)), chip="310P")


def test_a_device_beyond_the_visible_ones_is_rejected():
    with pytest.raises(RankTableError, match="device 3 is not visible: only 2 visible devices"):
        physical_devices([0, 1, 2, 3], [4, 5])


def test_missing_hccn_conf_names_the_file(tmp_path):
    with pytest.raises(RankTableError, match=rf"{tmp_path}/hccn.conf not found: expected the HCCN config"):
        read_hccn_conf(tmp_path / "hccn.conf")


def test_malformed_hccn_conf_names_file_and_line(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.1.1\naddress_1=not-an-ip\n")
    with pytest.raises(RankTableError, match=rf"{conf}:2: 'address_1=not-an-ip' is malformed"):
        read_hccn_conf(conf)


def test_missing_hccn_tool_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RankTableError, match="hccn_tool not found on PATH"):
        query_hccn_tool([0])


def test_hccn_tool_output_is_parsed(tmp_path, monkeypatch):
    tool = tmp_path / "hccn_tool"  # stands in for the Ascend driver's tool, which cannot run here
    tool.write_text('#!/bin/sh\necho "ipaddr:192.168.10$2.7"\necho "netmask:255.255.255.0"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert query_hccn_tool([0, 3]) == {0: "192.168.100.7", 3: "192.168.103.7"}


def test_merging_the_same_server_twice_is_rejected():
    table = golden("1x8")
    with pytest.raises(RankTableError, match="server 10.0.0.1 appears in more than one table"):
        merge_rank_tables([table, table])


def test_cli_reports_a_missing_conf_with_exit_2(tmp_path):
    proc = run_sknet("ranktable", "--hccn-conf", str(tmp_path / "nope.conf"), "--out", str(tmp_path / "t.json"),
                     check=False)
    assert proc.returncode == 2 and "nope.conf not found" in proc.stderr
    assert not (tmp_path / "t.json").exists()


def _device(device_id, rank_id, ip="192.168.100.101"):
    return {"device_id": device_id, "device_ip": ip, "rank_id": rank_id}


def _table(*servers):
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": list(servers), "status": "completed"}


def _server(server_id, *devices):
    return {"server_id": server_id, "device": list(devices), "host_nic_ip": "reserve"}


TWO_IPS = ("192.168.100.101", "192.168.101.101")
AT = r"server 10\.0\.0\.1, device"  # where a message says the device is
# name → (the table, or the file's text; what the refusal says after the file name). Issue 19 §4: the first 11 of
# these were accepted by `sknet launch --dry-run`, or crashed it.
HOSTILE = {
    "duplicate rank_id": (_table(_server("10.0.0.1", _device("0", "0"), _device("1", "0", TWO_IPS[1]))),
                          rf"{AT}\[1\]: rank_id '0' repeats that of {AT}\[0\]; expected each rank once"),
    "duplicate device_id": (_table(_server("10.0.0.1", _device("0", "0"), _device("0", "1", TWO_IPS[1]))),
                            rf"{AT}\[1\]: device_id '0' repeats that of {AT}\[0\]; expected each device of a server "
                            "once"),
    "rank ids 5 and 9 of 2": (_table(_server("10.0.0.1", _device("0", "5"), _device("1", "9", TWO_IPS[1]))),
                              rf"{AT}\[0\]: rank_id '5' is outside 0\.\.1: the table lists 2 device\(s\), so its rank "
                              r"ids must be exactly 0\.\.1, each once"),
    "a server listed twice": (_table(_server("10.0.0.1", _device("0", "0")),
                                     _server("10.0.0.1", _device("1", "1", TWO_IPS[1]))),
                              r"server 10\.0\.0\.1 \(server_list\[1\]\) is listed again \(first as server_list\[0\]\); "
                              r"expected each server once, with all its devices"),
    "negative rank_id": (_table(_server("10.0.0.1", _device("0", "-1"), _device("1", "0", TWO_IPS[1]))),
                         rf"{AT}\[0\]: rank_id '-1': expected a string of ASCII digits, e\.g\. '3'"),
    "negative device_id": (_table(_server("10.0.0.1", _device("-1", "0"))),
                           rf"{AT}\[0\]: device_id '-1': expected a string of ASCII digits within 0\.\.7"),
    "device 99": (_table(_server("10.0.0.1", _device("99", "0"))),
                  rf"{AT}\[0\]: device_id '99': expected a string of ASCII digits within 0\.\.7 \(the NPUs of a "
                  r"server\)"),
    "Unicode device digits": (_table(_server("10.0.0.1", _device("\u0663", "0"))),
                              rf"{AT}\[0\]: device_id '\u0663': expected a string of ASCII digits"),
    "Unicode rank digits": (_table(_server("10.0.0.1", _device("0", "\u0660"))),
                            rf"{AT}\[0\]: rank_id '\u0660': expected a string of ASCII digits"),
    "integer ids": (_table(_server("10.0.0.1", _device(0, 0))),
                    rf"{AT}\[0\]: device_id 0: expected a string of ASCII digits within 0\.\.7 \(the NPUs of a "
                    r"server\), e\.g\. '3' \(v1\.0 writes ids as strings\)"),
    "200k-deep JSON": ("[" * 200_000 + "]" * 200_000, r"nested too deeply to be a rank table"),
    "a device IP twice": (_table(_server("10.0.0.1", _device("0", "0"), _device("1", "1"))),
                          rf"{AT}\[1\]: device_ip '192\.168\.100\.101' repeats that of {AT}\[0\]; expected one NIC "
                          "address per device"),
    "an integer server_count": ({**_table(_server("10.0.0.1", _device("0", "0"))), "server_count": 1},
                                r"server_count 1: expected '1' \(the number of servers in server_list, as a string\)"),
    "an integer server_id": (_table(_server(1, _device("0", "0"))),
                             r"server_list\[0\]: server_id 1: expected the server's address as a string"),
    "a server without devices": (_table(_server("10.0.0.1")),
                                 r"server 10\.0\.0\.1: device: expected a non-empty list of devices"),
    "a list": ("[]", r"expected a JSON object \(a v1\.0 rank table\), got list"),
}


def write_hostile(path: Path, table) -> Path:
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    return path


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_rank_table_is_refused_naming_the_file_the_place_and_what_was_expected(tmp_path, name):
    table, message = HOSTILE[name]
    path = write_hostile(tmp_path / "rank_table.json", table)
    with pytest.raises(RankTableError, match=rf"^{path}: {message}"):
        load_rank_table(path)


@pytest.mark.parametrize("name", ["1x8", "1x4-visible-4-7", "2x8-merged"])
def test_the_golden_rank_tables_are_accepted(name):
    assert load_rank_table(GOLDEN / f"ranktable-{name}.json") == golden(name)
