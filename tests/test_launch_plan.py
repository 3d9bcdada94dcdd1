"""What `sknet launch` starts on this host, checked with `--dry-run` (no device needed): rank-table ranks
bind the table's devices (physical in the table, logical in DEVICE_ID), a merged table starts only this host's
ranks, HCCL ranks get their timeouts, bad settings fail before anything."""

import json
import re

import pytest

from conftest import run_sknet
from sknet.config import load_config
from sknet.launch.launcher import LaunchError, dry_run
from sknet.launch.ranks import HCCL_TIMEOUTS, plan_processes
from sknet.launch.ranktable import (
    RankTableError,
    build_rank_table,
    merge_rank_tables,
    read_hccn_conf,
    write_rank_table,
)
from test_ranktable import GOLDEN, HOSTILE, write_hostile

HCCL_KEYS = ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT")


@pytest.fixture(autouse=True)
def _plain_host(monkeypatch):
    """No container mapping and no operator HCCL settings unless a test sets them (importing MindSpore in this
    process sets HCCL_CONNECT_TIMEOUT=600 when it is unset)."""
    for key in ("ASCEND_VISIBLE_DEVICES", *HCCL_KEYS):
        monkeypatch.delenv(key, raising=False)


def ascend_cfg(tmp_path, table: dict, *overrides: str):
    path = write_rank_table(table, tmp_path / "rank_table.json")
    return load_config("cifar10-ascend8", [f"launch.rank_table={path}", f"train.output_dir={tmp_path / 'run'}",
                                           *overrides])


def by_rank(plan: dict) -> dict[int, dict]:
    return {p["ranks"][0]: p for p in plan["processes"]}


def table_for(server_ip: str, devices, visible=None, conf="hccn-server1.conf") -> dict:
    return build_rank_table(read_hccn_conf(GOLDEN / conf), list(devices), server_ip, visible)


def test_ranks_bind_the_devices_the_rank_table_gives_them(tmp_path):
    cfg = ascend_cfg(tmp_path, table_for("10.0.0.1", range(4, 8)), "launch.ranks=4", "launch.server_id=10.0.0.1")
    ranks = by_rank(dry_run(cfg, devices=8))
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, process in ranks.items():
        assert process["device_id"] == process["physical_device_id"] == 4 + rank  # no container: the same ids
        assert process["env"]["DEVICE_ID"] == str(4 + rank) and process["env"]["RANK_ID"] == str(rank)
        assert process["env"]["RANK_SIZE"] == "4"
        assert process["env"]["RANK_TABLE_FILE"] == str(tmp_path / "rank_table.json")
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_in_a_container_each_rank_binds_the_logical_id_of_its_tables_physical_npu(tmp_path, monkeypatch):
    table = table_for("10.0.0.1", range(4), visible=[4, 5, 6, 7])
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["4", "5", "6", "7"]
    monkeypatch.setenv("ASCEND_VISIBLE_DEVICES", "4,5,6,7")  # physical NPUs 4-7, seen inside as 0-3
    cfg = ascend_cfg(tmp_path, table, "launch.ranks=4", "launch.server_id=10.0.0.1")
    ranks = by_rank(dry_run(cfg, devices=4))
    assert [ranks[r]["env"]["DEVICE_ID"] for r in range(4)] == ["0", "1", "2", "3"]
    assert [(ranks[r]["device_id"], ranks[r]["physical_device_id"]) for r in range(4)] == [(0, 4), (1, 5), (2, 6),
                                                                                            (3, 7)]
    ips = [d["device_ip"] for d in table["server_list"][0]["device"]]
    assert ips == [read_hccn_conf(GOLDEN / "hccn-server1.conf")[p] for p in (4, 5, 6, 7)]


def test_a_table_device_this_container_cannot_see_is_refused_naming_device_table_and_visible_list(
        tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_VISIBLE_DEVICES", "0-3")
    cfg = ascend_cfg(tmp_path, table_for("10.0.0.1", range(4, 8)), "launch.ranks=4", "launch.server_id=10.0.0.1")
    with pytest.raises(LaunchError, match=rf"rank table {tmp_path}/rank_table.json gives device_id 4 \(a physical "
                                          r"NPU\) to this host, but it is not visible here: ASCEND_VISIBLE_DEVICES="
                                          r"0-3 \(physical NPUs 0, 1, 2, 3\)"):
        dry_run(cfg, devices=8)
    assert not (tmp_path / "run").exists()


def test_ascend_ranks_get_the_hccl_timeouts(tmp_path):
    cfg = ascend_cfg(tmp_path, table_for("10.0.0.1", range(8)), "launch.ranks=8", "launch.server_id=10.0.0.1")
    for process in dry_run(cfg, devices=8)["processes"]:
        assert {k: process["env"][k] for k in HCCL_KEYS} == {"HCCL_CONNECT_TIMEOUT": "1200",
                                                              "HCCL_EXEC_TIMEOUT": "612"}


def test_an_msrun_node_gets_the_hccl_timeouts_and_a_cpu_cluster_none(tmp_path):
    msrun = load_config("cpu-smoke", ["launch.backend=msrun", "launch.ranks=2", f"train.output_dir={tmp_path}"])
    (process,) = dry_run(msrun)["processes"]
    assert {k: process["env"][k] for k in HCCL_KEYS} == HCCL_TIMEOUTS
    cpu = load_config("cpu-smoke", ["launch.ranks=2", f"train.output_dir={tmp_path}"])
    assert all(not set(HCCL_KEYS) & set(p["env"]) for p in dry_run(cpu)["processes"])


def test_an_operators_own_hccl_timeouts_win(tmp_path, monkeypatch):
    monkeypatch.setenv("HCCL_CONNECT_TIMEOUT", "3600")
    monkeypatch.setenv("HCCL_EXEC_TIMEOUT", "1836")
    cfg = ascend_cfg(tmp_path, table_for("10.0.0.1", range(8)), "launch.ranks=8", "launch.server_id=10.0.0.1")
    for process in dry_run(cfg, devices=8)["processes"]:
        assert (process["env"]["HCCL_CONNECT_TIMEOUT"], process["env"]["HCCL_EXEC_TIMEOUT"]) == ("3600", "1836")
    for process in plan_processes(cfg, 0, environ={"HCCL_EXEC_TIMEOUT": "1836"}):  # what _start adds on top
        assert process.env["HCCL_CONNECT_TIMEOUT"] == "1200" and "HCCL_EXEC_TIMEOUT" not in process.env


def test_a_merged_table_starts_only_this_hosts_ranks_with_their_global_ids(tmp_path):
    merged = merge_rank_tables([table_for("10.0.0.1", range(8)),
                                table_for("10.0.0.2", range(8), conf="hccn-server2.conf")])
    cfg = ascend_cfg(tmp_path, merged, "launch.ranks=16", "launch.server_id=10.0.0.2")
    ranks = by_rank(dry_run(cfg, devices=8))
    assert sorted(ranks) == list(range(8, 16))
    assert [ranks[r]["env"]["DEVICE_ID"] for r in range(8, 16)] == [str(d) for d in range(8)]
    assert {ranks[r]["env"]["RANK_SIZE"] for r in ranks} == {"16"}


def test_this_host_is_found_in_the_table_by_its_addresses(tmp_path):
    cfg = ascend_cfg(tmp_path, table_for("127.0.0.1", range(8)), "launch.ranks=8")
    assert sorted(by_rank(dry_run(cfg, devices=8))) == list(range(8))


@pytest.mark.parametrize("overrides, message", [
    (["launch.ranks=8", "launch.server_id=10.0.0.1"], r"launch\.ranks=8, but rank table .* lists 4 devices"),
    (["launch.ranks=4"], r"this host \(.*\) is not in rank table .* \(servers: 10\.0\.0\.1\)"),
    (["launch.ranks=4", "launch.server_id=10.9.9.9"], r"launch\.server_id=10\.9\.9\.9 is not in rank table"),
])
def test_a_rank_table_that_does_not_fit_is_refused_before_anything_starts(tmp_path, overrides, message):
    cfg = ascend_cfg(tmp_path, table_for("10.0.0.1", range(4)), *overrides)
    with pytest.raises(LaunchError, match=message):
        dry_run(cfg, devices=8)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_rank_table_is_refused_by_the_dry_run_before_anything_starts(tmp_path, name):
    table, message = HOSTILE[name]
    path = write_hostile(tmp_path / "rank_table.json", table)
    cfg = load_config("cifar10-ascend8", [f"launch.rank_table={path}", "launch.ranks=2", "launch.server_id=10.0.0.1",
                                          f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(RankTableError, match=rf"^{path}: {message}"):
        dry_run(cfg, devices=8)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (["launch.master_addr=127.0.0.1", "launch.master_port=8118"], r"set the address of node 0 .* \(not loopback\)"),
    (["launch.master_addr=localhost", "launch.master_port=8118"], r"not loopback"),
    (["launch.master_addr=10.1.0.1"], r"needs a fixed launch\.master_port"),
    (["launch.master_addr=10.1.0.1", "launch.master_port=8118", "launch.node_rank=2"],
     r"launch\.node_rank=2: expected 0 … 1"),
    (["launch.master_addr=10.1.0.1", "launch.master_port=8118", "launch.ranks=3"], r"not divisible"),
    (["launch.master_addr=10.1.0.1", "launch.master_port=8118", "launch.backend=cpu"],
     r"launch\.nodes=2 needs launch\.backend=msrun"),
])
def test_several_nodes_need_a_reachable_master_on_a_fixed_port(tmp_path, overrides, message):
    cfg = load_config("cpu-smoke", ["launch.backend=msrun", "launch.nodes=2", "launch.ranks=2",
                                    f"train.output_dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(LaunchError, match=message):
        dry_run(cfg)


def test_an_msrun_node_starts_its_own_ranks_against_the_shared_master(tmp_path):
    cfg = load_config("cpu-smoke", ["launch.backend=msrun", "launch.nodes=2", "launch.ranks=4",
                                    "launch.node_rank=1", "launch.master_addr=10.1.0.1", "launch.master_port=8118",
                                    f"train.output_dir={tmp_path / 'run'}"])
    (process,) = dry_run(cfg)["processes"]
    assert process["name"] == "msrun" and process["ranks"] == [2, 3]
    command = process["command"]
    assert {"--worker_num=4", "--local_worker_num=2", "--node_rank=1", "--master_addr=10.1.0.1",
            "--master_port=8118", "--join=True"} <= set(command)
    assert "--tail_worker_log=-1" not in command  # we follow the worker logs ourselves: no double lines


def test_the_cli_dry_run_prints_json_masks_secrets_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    proc = run_sknet("launch", "--dry-run", "--config", "cpu-smoke",
                     "--set", "launch.ranks=2", f"train.output_dir={tmp_path / 'run'}")
    plan = json.loads(proc.stdout)
    assert [p["name"] for p in plan["processes"]] == ["sched", "0", "1"]
    assert "canary-secret-value" not in proc.stdout + proc.stderr
    env = plan["processes"][1]["env"]
    assert env["AWS_SECRET_ACCESS_KEY"] == "***" and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["MS_ROLE"] == "MS_WORKER" and env["RANK_ID"] == "0"
    assert not (tmp_path / "run").exists()


def test_the_dry_run_masks_user_info_and_signatures_in_urls_of_any_variable(tmp_path, monkeypatch):
    """Issue 19 §2: a password in an endpoint URL, a token as user name and a presigned URL's signature are masked
    in the printed environment, whatever the variable's name; the rest of each URL is kept."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio-user:PASSWORD123@minio.local:9000")
    monkeypatch.setenv("MS_DATA_MIRROR", "https://TOKEN456@mirror.example/data")
    monkeypatch.setenv("AWS_PRESIGNED", "https://b.example/k?X-Amz-Credential=CRED789&X-Amz-Signature=SIG000&n=1")
    cfg = load_config("cpu-smoke", [f"train.output_dir={tmp_path / 'run'}"])
    env = dry_run(cfg)["processes"][0]["env"]
    assert not re.search("PASSWORD123|minio-user|TOKEN456|CRED789|SIG000", json.dumps(env))
    assert env["AWS_ENDPOINT_URL"] == "http://REDACTED@minio.local:9000"
    assert env["MS_DATA_MIRROR"] == "https://REDACTED@mirror.example/data"
    assert env["AWS_PRESIGNED"] == "https://b.example/k?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&n=1"


def test_one_cpu_rank_is_one_process_that_joins_no_group(tmp_path):
    """A scheduler and a group of one cost a single rank a process and seconds of start-up to all-reduce nothing:
    one rank is planned as `sknet train` runs, like a one-device Ascend run (RANK_SIZE 1: no group either)."""
    plan = json.loads(run_sknet("launch", "--dry-run", "--config", "cpu-smoke",
                                "--set", f"train.output_dir={tmp_path / 'run'}").stdout)
    [rank] = plan["processes"]
    assert rank["name"] == "0" and rank["env"]["RANK_ID"] == "0"
    assert not {"MS_ROLE", "MS_SCHED_HOST", "MS_WORKER_NUM"} & set(rank["env"])
