"""`sknet preflight`: every check on its own. The NPU tools are stand-in scripts (tests/npu_tools/) printing the
real tools' output formats; the CPU checks run for real (a 2-rank mccl collective through the launcher)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import run_sknet
from sknet.cli import build_parser, main
from sknet.preflight.npu_smi import chip_problems, parse_npu_smi_info
from sknet.preflight.runner import Check, Context, Failed, Outcome, Skip, run_checks

TESTS = Path(__file__).resolve().parent
NPU_TOOLS = TESTS / "npu_tools"
HCCN_CONF = TESTS / "golden" / "hccn-server1.conf"
RANK_TABLE = TESTS / "golden" / "ranktable-1x8.json"  # server 10.0.0.1, devices 0-7 with hccn-server1.conf's IPs
TWO_SERVERS = TESTS / "golden" / "ranktable-2x8-merged.json"  # 10.0.0.1 (ranks 0-7, the same IPs) and 10.0.0.2
STANDIN_ENV = ("NPU_STANDIN_CHIP", "NPU_STANDIN_HEALTH", "NPU_STANDIN_PROCESS", "NPU_STANDIN_LINK_DOWN",
               "NPU_STANDIN_NET_HEALTH", "NPU_STANDIN_IP", "NPU_STANDIN_HCCN_CONF")
NPU_CHECKS = ("versions", "npu-smi", "device-links", "device-ips", "launch-plan")
SLOW_SKIPPED = {"collective": "skip", "sink-smoke": "skip", "sigterm": "skip"}  # what --quick leaves out
ONE_SERVER = {**dict.fromkeys(NPU_CHECKS, "pass"), "device-links": "skip"}  # its NICs carry none of the job


def npu_smi_output(**faults: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if k not in STANDIN_ENV}, **faults}
    return subprocess.run([NPU_TOOLS / "npu-smi", "info"], capture_output=True, text=True, check=True, env=env).stdout


def statuses(report: dict) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def detail(report: dict, name: str) -> str:
    return next(check["detail"] for check in report["checks"] if check["name"] == name)


@pytest.fixture
def ascend_host(monkeypatch, tmp_path):
    """This machine as an 8-NPU Atlas server: npu-smi and hccn_tool stand-ins on PATH, a CANN toolkit that
    MindSpore accepts, and 8 devices for the launch plan (as `launch(devices=8)` stands in for them)."""
    monkeypatch.setenv("PATH", f"{NPU_TOOLS}{os.pathsep}{os.environ['PATH']}")
    for name in STANDIN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ASCEND_VISIBLE_DEVICES", raising=False)
    toolkit = tmp_path / "ascend-toolkit" / "latest"
    (toolkit / "compiler").mkdir(parents=True)
    (toolkit / "compiler" / "version.info").write_text("Version=8.3.RC1\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(toolkit))
    monkeypatch.setattr("sknet.launch.launcher.available_devices", lambda backend: 8)
    return monkeypatch


def preflight_on_ascend(tmp_path, capsys, *extra: str) -> tuple[int, dict, str]:
    """`sknet preflight --quick` for the Ascend profile on this host's rank-table entry: (exit code, JSON, table)."""
    code = main(["preflight", "--config", "cifar10-ascend8", "--set", f"launch.rank_table={RANK_TABLE}",
                 "launch.server_id=10.0.0.1", "--hccn-conf", str(HCCN_CONF), "--work", str(tmp_path / "work"),
                 "--quick", *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


# --- the npu-smi parser, on both server layouts -----------------------------------------------------------------

@pytest.mark.parametrize("chip, name, driver, hbm", [("910", "910ProB", "24.1.0", (18, 32768)),
                                                     ("910B", "910B3", "25.2.0", (3408, 65536))])
def test_npu_smi_info_is_read_in_the_atlas_800_and_800t_a2_layouts(chip, name, driver, hbm):
    info = parse_npu_smi_info(npu_smi_output(NPU_STANDIN_CHIP=chip))
    assert info.driver_version == driver
    assert [(c.npu, c.chip, c.name, c.health) for c in info.chips] == [(n, 0, name, "OK") for n in range(8)]
    assert {(c.hbm_used_mb, c.hbm_total_mb) for c in info.chips} == {hbm}
    assert info.processes == [] and chip_problems(info) == []


def test_a_process_holding_a_chip_is_named_with_its_pid_and_memory():
    info = parse_npu_smi_info(npu_smi_output(NPU_STANDIN_PROCESS="6=1333928"))
    assert [(p.npu, p.chip, p.pid, p.memory_mb) for p in info.processes] == [(6, 0, 1333928, 37709)]
    problems = chip_problems(info)
    assert any(p.startswith("NPU 6 chip 0 (910B3, 0000:41:00.0): 41117 of 65536 MB HBM in use") for p in problems)
    assert "NPU 6 chip 0: held by process 1333928 (python) using 37709 MB; stop it before training" in problems


# --- the runner -------------------------------------------------------------------------------------------------

def test_a_check_that_raises_fails_alone_and_hides_no_other(tmp_path):
    def broken(ctx):
        raise KeyError("device_ip")

    def cannot_run(ctx):
        raise Skip("needs an NPU")

    def finds_a_fault(ctx):
        raise Failed("device 3: link DOWN")

    checks = [Check("broken", broken), Check("skipped", cannot_run), Check("faulty", finds_a_fault),
              Check("fine", lambda ctx: Outcome("all good"))]
    report = run_checks(checks, Context(cfg=None, work=tmp_path, hccn_conf=HCCN_CONF))
    assert statuses(report) == {"broken": "fail", "skipped": "skip", "faulty": "fail", "fine": "pass"}
    assert detail(report, "broken").startswith("KeyError: 'device_ip' (at test_preflight.py:")
    assert report["passed"] is False
    assert all(set(c) == {"name", "status", "detail", "seconds", "data"} for c in report["checks"])


def test_quick_leaves_out_the_slow_checks_and_says_so(tmp_path):
    def never(ctx):
        raise AssertionError("a slow check ran under quick")

    report = run_checks([Check("smoke", never, slow=True)], Context(None, tmp_path, HCCN_CONF), quick=True)
    assert report == {"passed": True, "checks": [{"name": "smoke", "status": "skip", "seconds": 0.0, "data": {},
                                                  "detail": "a slow check: left out by --quick"}]}


def test_one_cpu_rank_has_no_collective_to_check_and_starts_nothing(tmp_path):
    from sknet.config import load_config
    from sknet.preflight.collective import check_collective

    report = run_checks([Check("collective", check_collective, slow=True)],
                        Context(load_config("cpu-smoke"), tmp_path / "work", HCCN_CONF))
    assert statuses(report) == {"collective": "skip"}
    assert detail(report, "collective").startswith("launch.ranks=1 on CPU: one rank trains without a collective")
    assert not (tmp_path / "work").exists()


# --- an Ascend host, through the stand-in tools -----------------------------------------------------------------

def test_a_healthy_ascend_host_passes_every_fast_check(ascend_host, tmp_path, capsys):
    code, report, table = preflight_on_ascend(tmp_path, capsys)
    assert code == 0 and report["passed"] is True
    assert statuses(report) == {**ONE_SERVER, **SLOW_SKIPPED}
    assert "NPU driver 25.2.0" in detail(report, "versions") and "CANN 8.3" in detail(report, "versions")
    assert detail(report, "device-ips").endswith("0=192.168.100.101, 1=192.168.101.101, 2=192.168.102.101, "
                                                 "3=192.168.103.101, 4=192.168.100.100, 5=192.168.101.100, "
                                                 "6=192.168.102.100, 7=192.168.103.100")
    assert table.splitlines()[0].split() == ["check", "status", "seconds", "detail"]
    assert "preflight passed: 4 passed, 0 failed, 4 skipped" in table
    assert detail(report, "device-links").startswith("one server: HCCL runs over HCCS/PCIe inside a server")


def test_a_link_that_is_down_is_named_and_the_other_checks_still_run(ascend_host, tmp_path, capsys):
    """Two servers: the job's all-reduce crosses them over the device NICs, so their links are checked."""
    ascend_host.setenv("NPU_STANDIN_LINK_DOWN", "3")
    code, report, table = preflight_on_ascend(tmp_path, capsys, "--set", f"launch.rank_table={TWO_SERVERS}",
                                              "launch.ranks=16")
    assert code == 1 and report["passed"] is False
    assert statuses(report) == {**dict.fromkeys(NPU_CHECKS, "pass"), "device-links": "fail", **SLOW_SKIPPED}
    assert detail(report, "device-links").startswith(
        "device 3 (rank 3): link DOWN (hccn_tool -i 3 -link -g), expected UP")
    assert "device-links   FAIL" in table and "sknet: preflight failed: device-links" in table


def test_a_device_ip_that_differs_from_hccn_conf_names_the_device_both_ips_and_both_sources(ascend_host, tmp_path,
                                                                                           capsys):
    ascend_host.setenv("NPU_STANDIN_IP", "5=10.9.9.9")
    code, report, _ = preflight_on_ascend(tmp_path, capsys)
    assert code == 1
    assert statuses(report) == {**ONE_SERVER, "device-ips": "fail", **SLOW_SKIPPED}
    assert detail(report, "device-ips").splitlines() == [
        f"device 5 (rank 5): hccn_tool -i 5 -ip -g gives 10.9.9.9, but {HCCN_CONF} (address_5) gives 192.168.101.100",
        f"device 5 (rank 5): hccn_tool -i 5 -ip -g gives 10.9.9.9, but rank table {RANK_TABLE} gives 192.168.101.100",
    ]


def test_a_chip_whose_health_is_not_ok_is_named_and_the_other_checks_still_run(ascend_host, tmp_path, capsys):
    ascend_host.setenv("NPU_STANDIN_CHIP", "910")
    ascend_host.setenv("NPU_STANDIN_HEALTH", "2=Alarm")
    code, report, _ = preflight_on_ascend(tmp_path, capsys)
    assert code == 1
    assert statuses(report) == {**ONE_SERVER, "npu-smi": "fail", **SLOW_SKIPPED}
    assert detail(report, "npu-smi") == "NPU 2 chip 0 (910ProB, 0000:41:00.0): Health is Alarm, expected OK"


def test_one_servers_device_links_are_checked_when_hccl_is_told_to_use_roce_inside_it(ascend_host, tmp_path, capsys):
    ascend_host.setenv("HCCL_INTRA_ROCE_ENABLE", "1")
    ascend_host.setenv("NPU_STANDIN_LINK_DOWN", "3")
    _, report, _ = preflight_on_ascend(tmp_path, capsys)
    assert statuses(report)["device-links"] == "fail"


def test_only_the_npus_of_the_plan_are_judged_another_jobs_chips_are_left_alone(ascend_host, tmp_path, capsys):
    from sknet.launch.ranktable import build_rank_table, read_hccn_conf, write_rank_table

    table = write_rank_table(build_rank_table(read_hccn_conf(HCCN_CONF), [0, 1, 2, 3], "10.0.0.1"),
                             tmp_path / "rt_4p.json")
    plan = ("--set", f"launch.rank_table={table}", "launch.ranks=4")
    ascend_host.setenv("NPU_STANDIN_PROCESS", "6=1333928")  # another job holds NPU 6
    ascend_host.setenv("NPU_STANDIN_HEALTH", "7=Alarm")
    code, report, _ = preflight_on_ascend(tmp_path, capsys, *plan)
    assert statuses(report)["npu-smi"] == "pass", detail(report, "npu-smi")
    assert detail(report, "npu-smi").startswith("4 chip(s) of the plan (910B3): Health OK, HBM free, no processes; "
                                                "4 chip(s) outside the plan not checked")
    ascend_host.setenv("NPU_STANDIN_PROCESS", "2=1333928")  # … and now one of ours
    _, report, _ = preflight_on_ascend(tmp_path, capsys, *plan)
    assert "NPU 2 chip 0: held by process 1333928" in detail(report, "npu-smi")


@pytest.mark.parametrize("image_chip, standin, passes", [("910b", "910B", True), ("910", "910", True),
                                                         ("910", "910B", False), ("910b", "910", False)])
def test_the_chips_npu_smi_lists_must_be_the_images_chip(ascend_host, tmp_path, capsys, image_chip, standin, passes):
    ascend_host.setenv("SKNET_ASCEND_CHIP", image_chip)
    ascend_host.setenv("NPU_STANDIN_CHIP", standin)
    if standin == "910":  # the stand-in's Atlas 800 has driver 24.1.0: a CANN it runs
        (Path(os.environ["ASCEND_HOME_PATH"]) / "compiler" / "version.info").write_text("Version=8.3.RC1\n")
    _, report, _ = preflight_on_ascend(tmp_path, capsys)
    assert (statuses(report)["npu-smi"] == "pass") is passes, detail(report, "npu-smi")
    if not passes:
        assert detail(report, "npu-smi").startswith(f"npu-smi lists {'910B3' if standin == '910B' else '910ProB'} "
                                                    f"chip(s), but this run is for the Ascend {image_chip.upper()}")


def test_a_driver_older_than_the_canns_minimum_fails_the_versions_check(ascend_host, tmp_path, capsys):
    ascend_host.setenv("NPU_STANDIN_CHIP", "910")  # driver 24.1.0
    (Path(os.environ["ASCEND_HOME_PATH"]) / "compiler" / "version.info").write_text("Version=9.1.0\n")
    _, report, _ = preflight_on_ascend(tmp_path, capsys)
    assert statuses(report)["versions"] == "fail"
    assert "NPU driver 24.1.0: CANN 9.1 needs Ascend HDK 25.2.0 or newer" in detail(report, "versions")


@pytest.mark.parametrize("older, newer", [("24.1.RC2", "24.1.0"), ("24.1.0", "25.0.RC1"), ("25.2.0", "25.2.0.1"),
                                          ("24.1.RC2", "24.1.RC3"), ("9.9.9", "24.1.RC1")])
def test_hdk_versions_order_release_candidates_before_their_release(older, newer):
    from sknet.preflight.versions import hdk_order

    assert hdk_order(older) < hdk_order(newer)


def test_a_cann_that_mindspore_does_not_accept_fails_the_versions_check(ascend_host, tmp_path, capsys):
    toolkit = Path(os.environ["ASCEND_HOME_PATH"])
    (toolkit / "compiler" / "version.info").write_text("Version=8.1.RC1\n")
    code, report, _ = preflight_on_ascend(tmp_path, capsys)
    assert code == 1 and statuses(report)["versions"] == "fail"
    assert detail(report, "versions") == (f"CANN 8.1 ({toolkit}/compiler/version.info): MindSpore 2.10.0 accepts "
                                          "CANN 8.2, 8.3, 8.5, 9.0, 9.1; install one of those")


def test_preflight_has_help_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["preflight", "--help"])
    assert exit_.value.code == 0 and "example" in capsys.readouterr().out


def test_an_unknown_profile_is_bad_input_exit_2(capsys):
    assert main(["preflight", "--config", "no-such-profile"]) == 2
    assert "unknown config profile 'no-such-profile'" in capsys.readouterr().err


# --- this CPU machine, for real ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_preflight(synthetic_data, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`sknet preflight` of the CPU profile with 2 ranks, as an operator runs it (one real collective smoke, one
    training smoke, one SIGTERM), on a local layout (data.uri) so that it makes no synthetic one; batches of 8
    (the smokes train the config's batch: a quarter of cpu-smoke's compute, the same checks)."""
    work = tmp_path_factory.mktemp("preflight-work")
    proc = run_sknet("preflight", "--config", "cpu-smoke", "--set", "launch.ranks=2", "train.batch_size=8",
                     f"data.uri={synthetic_data}", "--work", str(work), check=False)
    return proc, json.loads(proc.stdout), work


def test_on_cpu_the_npu_checks_skip_with_the_reason_and_the_rest_passes(cpu_preflight):
    proc, report, _ = cpu_preflight
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert statuses(report) == {"versions": "pass", "npu-smi": "skip", "device-links": "skip", "device-ips": "skip",
                                "launch-plan": "pass", "collective": "pass", "sink-smoke": "pass", "sigterm": "pass"}
    assert detail(report, "npu-smi") == "train.device_target=CPU: this run uses no NPU"
    assert "numpy 1.26." in detail(report, "versions")
    lines = proc.stderr.splitlines()  # each slow check says it started before its minutes begin (issue #27 §17)
    for name in ("collective", "sink-smoke", "sigterm"):
        started = next(i for i, line in enumerate(lines) if line.startswith(name) and "(running:" in line)
        assert started < next(i for i, line in enumerate(lines) if line.startswith(name) and "pass" in line)


def test_the_collective_smoke_runs_two_cpu_ranks_over_mccl_and_reports_a_bandwidth(cpu_preflight):
    _, report, work = cpu_preflight
    collective = next(c for c in report["checks"] if c["name"] == "collective")
    assert collective["data"]["group_size"] == 2 and collective["data"]["backend"] == "mccl"
    assert collective["data"]["ones_sum"] == [2.0, 2.0] and collective["data"]["payload_bytes"] == 64 * 2**20
    assert collective["data"]["algbw_gbps"] > 0 and len(collective["data"]["seconds"]) == 5
    assert "GB/s algorithm bandwidth" in collective["detail"]
    assert list(work.iterdir()) == []  # a passed smoke leaves no scratch run behind


def test_the_table_goes_to_stderr_and_only_json_to_stdout(cpu_preflight):
    proc, _, _ = cpu_preflight
    assert proc.stdout.lstrip().startswith("{") and "preflight passed:" in proc.stderr
    assert "collective     pass" in proc.stderr


def test_the_training_smoke_trains_two_windows_per_epoch_through_the_launcher_with_one_compile(cpu_preflight):
    _, report, _ = cpu_preflight
    smoke = next(c for c in report["checks"] if c["name"] == "sink-smoke")
    assert smoke["data"]["sink_size"] == 4 and smoke["data"]["ms_per_step"] > 0  # CPU: windows of 4 steps
    assert "4 sinks of 4 steps, the step advancing by 4 each" in smoke["detail"]
    assert len(smoke["data"]["rss_mb"]) == 3


def test_sigterm_stops_both_ranks_after_one_step_with_a_checkpoint_that_verifies(cpu_preflight):
    _, report, _ = cpu_preflight
    sigterm = next(c for c in report["checks"] if c["name"] == "sigterm")
    assert sigterm["data"]["ranks"] == 2 and sigterm["data"]["step"] >= 1
    assert "its checkpoint verifies" in sigterm["detail"]


def test_a_recompiling_or_leaking_run_fails_the_sink_judgement():
    from sknet.config import load_config
    from sknet.preflight.training import _judge_sinks

    cfg = load_config("cpu-smoke")
    steady = [{"images_per_sec": 32.0, "rss_mb": 1000.0}] * 4  # 4 steps × 32 images: 4 s a sink
    assert "ms/step steady" in _judge_sinks(steady, 4, 32, cfg).detail
    recompiled = [steady[0], steady[1], {"images_per_sec": 4.0, "rss_mb": 1000.0}, steady[3]]  # epoch 2's first
    with pytest.raises(Failed, match="sink 3 took 32.0 s.*compiled again"):
        _judge_sinks(recompiled, 4, 32, cfg)
    leaking = [*steady[:3], {"images_per_sec": 32.0, "rss_mb": 1500.0}]
    with pytest.raises(Failed, match="grew from 1000 MB to 1500 MB"):
        _judge_sinks(leaking, 4, 32, cfg)
