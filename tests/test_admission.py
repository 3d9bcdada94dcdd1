"""Every configuration the README calls supported plans a run, and every other one is refused by the dry run,
naming why: world size (1, 2, 4, 8 devices on one server; 2, 4, 8 servers of 8) × chip (910, 910B) × backend
(ascend, msrun), with the shipped Ascend profile. What the dry run decides is what each rank decides
(`sknet.launch.admission.admit`), and what preflight's launch-plan check reports."""

import json

import pytest

from conftest import run_sknet
from sknet.config import load_config
from sknet.errors import SknetError
from sknet.launch.admission import CHIP_ENV, admit
from sknet.launch.launcher import dry_run
from sknet.launch.ranktable import build_rank_table, merge_rank_tables, write_rank_table
from sknet.preflight.launch_plan import check_launch_plan
from sknet.preflight.runner import Context, Failed

CHIPS = ("910", "910B")
BACKENDS = ("ascend", "msrun")
SERVER_IPS = [f"10.0.0.{n}" for n in range(1, 9)]
ONE_SERVER = [(1, devices) for devices in (1, 2, 4, 8)]
SEVERAL_SERVERS = [(servers, 8) for servers in (2, 4, 8)]
EPOCH = {1: 1562, 2: 781, 4: 390, 8: 195, 16: 97, 32: 48, 64: 24}  # 50,000 records, batch 32 per rank


@pytest.fixture(autouse=True)
def _plain_host(monkeypatch):
    for key in ("ASCEND_VISIBLE_DEVICES", CHIP_ENV):
        monkeypatch.delenv(key, raising=False)


def server_table(server: int, devices) -> dict:
    ips = {d: f"192.168.{server}.{d}" for d in range(8)}
    return build_rank_table(ips, list(devices), SERVER_IPS[server], chip="910B")  # the chip rule is the plan's


def job(tmp_path, backend: str, chip: str, servers: int, devices, *overrides: str):
    """The profile's config for `servers` servers using `devices` (a count, or the ids on each server)."""
    ids = list(range(devices)) if isinstance(devices, int) else list(devices)
    ranks = servers * len(ids)
    common = [f"launch.backend={backend}", f"launch.chip={chip}", f"launch.ranks={ranks}",
              f"train.output_dir={tmp_path / 'run'}"]
    if backend == "ascend":
        table = merge_rank_tables([server_table(s, ids) for s in range(servers)])
        path = write_rank_table(table, tmp_path / "rank_table.json")
        common += [f"launch.rank_table={path}", f"launch.server_id={SERVER_IPS[0]}"]
    elif servers > 1:
        common += [f"launch.nodes={servers}", "launch.master_addr=10.0.0.1", "launch.master_port=8118"]
    return load_config("cifar10-ascend8", [*common, *overrides])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("servers, devices", ONE_SERVER + SEVERAL_SERVERS)
def test_every_supported_configuration_plans_a_run_with_a_sink_dividing_the_epoch(tmp_path, backend, chip, servers,
                                                                                   devices):
    plan = dry_run(job(tmp_path, backend, chip, servers, devices), devices=8)
    ranks = servers * devices
    assert plan["steps_per_epoch"] == EPOCH[ranks]
    assert plan["steps_per_epoch"] % plan["sink_size"] == 0 and plan["sink_size"] >= 16
    assert plan["plan"]["chip"] == chip and plan["plan"]["devices_per_server"] == [devices] * servers
    local = sorted(r for p in plan["processes"] for r in p["ranks"])
    assert local == list(range(devices))  # server 0 (node 0) starts its own ranks
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("devices", [3, 5, 6, 7])
def test_an_atlas_a2_takes_any_number_of_its_devices_and_a_910_refuses_them_naming_its_rings(tmp_path, backend,
                                                                                            devices):
    plan = dry_run(job(tmp_path, backend, "910B", 1, devices), devices=8)
    assert plan["plan"]["devices_per_server"] == [devices]
    with pytest.raises(SknetError, match=rf"Ascend 910, this job's server: {devices} devices .* runs jobs of 1, 2, "
                                         r"4 or 8 devices .*launch\.chip=910B"):
        dry_run(job(tmp_path, backend, "910", 1, devices), devices=8)


def test_a_910_job_across_its_hccs_rings_is_refused(tmp_path):
    dry_run(job(tmp_path, "ascend", "910B", 1, [2, 3, 4, 5]), devices=8)
    with pytest.raises(SknetError, match=r"physical devices \[2, 3, 4, 5\] cross the HCCS groups 0-3 / 4-7"):
        dry_run(job(tmp_path, "ascend", "910", 1, [2, 3, 4, 5]), devices=8)


def test_a_910_cluster_with_unequal_servers_is_refused(tmp_path):
    table = merge_rank_tables([server_table(0, range(8)), server_table(1, range(4))])
    path = write_rank_table(table, tmp_path / "rank_table.json")
    overrides = [f"launch.rank_table={path}", "launch.ranks=12", f"launch.server_id={SERVER_IPS[0]}",
                 f"train.output_dir={tmp_path / 'run'}"]
    assert dry_run(load_config("cifar10-ascend8", [*overrides, "launch.chip=910B"]), devices=8)["sink_size"] == 65
    with pytest.raises(SknetError, match=r"devices per server \[8, 4\]; .* the same number on every server"):
        dry_run(load_config("cifar10-ascend8", [*overrides, "launch.chip=910"]), devices=8)


@pytest.mark.parametrize("chip", CHIPS)
def test_more_ranks_on_a_node_than_its_npus_are_refused(tmp_path, chip):
    with pytest.raises(SknetError, match=r"needs 16 local Ascend devices \(/dev/davinci\*\), this host has 8"):
        dry_run(job(tmp_path, "msrun", chip, 1, 16), devices=8)
    with pytest.raises(SknetError, match="16 devices on one server: an Ascend .* server has 8 NPUs"):
        admit(job(tmp_path, "msrun", chip, 1, 16))


def test_the_images_chip_is_the_plans_when_the_config_names_none(tmp_path, monkeypatch):
    cfg = job(tmp_path, "msrun", "", 1, 3)
    assert dry_run(cfg, devices=8)["plan"]["chip"] is None  # unknown: no rule to check
    monkeypatch.setenv(CHIP_ENV, "910b")
    assert dry_run(cfg, devices=8)["plan"]["chip"] == "910B"
    monkeypatch.setenv(CHIP_ENV, "910")
    with pytest.raises(SknetError, match="3 devices"):
        dry_run(cfg, devices=8)


def test_preflight_reports_the_plan_the_ranks_will_use_and_fails_on_what_they_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr("sknet.launch.launcher.available_devices", lambda backend: 8)  # an 8-NPU host
    ctx = Context(job(tmp_path, "ascend", "910", 1, 1), tmp_path / "work", tmp_path / "hccn.conf")
    outcome = check_launch_plan(ctx)
    assert outcome.data["steps"]["steps_per_epoch"] == 1562 and outcome.data["steps"]["sink_size"] == 71
    assert "1562 steps per epoch, a sink of 71 steps" in outcome.detail
    assert "the plan moves train.checkpoint_every_steps=975 → 994" in outcome.detail
    with pytest.raises(Failed, match="the launch plan is refused: .*runs jobs of 1, 2, 4 or 8"):
        check_launch_plan(Context(job(tmp_path, "ascend", "910", 1, 3), tmp_path / "work", tmp_path / "hccn.conf"))


def test_the_cli_dry_run_prints_the_steps_per_epoch_and_sink_at_the_top(tmp_path):
    plan = json.loads(run_sknet("launch", "--dry-run", "--config", "cpu-smoke",
                                "--set", f"train.output_dir={tmp_path / 'run'}").stdout)
    assert (plan["steps_per_epoch"], plan["sink_size"]) == (20, 1)
    assert plan["plan"]["log_every_steps"] == 5 and plan["plan"]["chip"] is None


def test_a_910b_run_from_a_rank_table_is_told_that_msrun_keeps_the_fused_overflow_check(tmp_path):
    """MindSpore turns AllFinite off whenever RANK_TABLE_FILE is set (loss_scale.py); the plan says so."""
    noted = dry_run(job(tmp_path, "ascend", "910B", 1, 8), devices=8)["plan"]["notes"]
    assert len(noted) == 1 and "AllFinite" in noted[0] and "launch.backend=msrun" in noted[0]
    assert dry_run(job(tmp_path, "msrun", "910B", 1, 8), devices=8)["plan"]["notes"] == []
    assert dry_run(job(tmp_path, "ascend", "910", 1, 8), devices=8)["plan"]["notes"] == []  # status register
