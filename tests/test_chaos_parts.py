"""The chaos bench's pieces (bench/chaos/, infra/faultproxy.py), without a chaos run: the seeded fault plan,
how a final state is classified, the temp-file patterns, the release and mirror checks on a file:// store,
and the proxy's seeded fault rate."""

import hashlib
import json

from bench.chaos import (
    KINDS,
    STEPS,
    classify,
    latest_check,
    mirrored_steps,
    plan_faults,
    temp_keys,
    temp_paths,
    verify_prefixes,
)
from infra.faultproxy import FaultProxy
from sknet.storage import LocalStore


def test_the_fault_plan_is_seeded_and_meets_every_kind():
    plan = plan_faults(8, seed=3)
    assert plan == plan_faults(8, seed=3) and plan != plan_faults(8, seed=4)
    for faults in plan:
        assert 1 <= len(faults) <= 2 and len({f["kind"] for f in faults}) == len(faults)
        for fault in faults:
            assert fault["kind"] in KINDS
            assert 0 < fault.get("at_step", 1) < STEPS
    assert {plan[i][0]["kind"] for i in range(4)} == set(KINDS)
    assert all(f["at_step"] % 5 != 0 for faults in plan for f in faults if f["kind"] == "disk_full")


def test_a_run_that_did_not_complete_needs_a_message_naming_the_cause():
    assert classify("COMPLETED", None) == ("completed", None)
    assert classify("FAILED", "Flow run encountered an exception: GateFailed: gate failed: top_1_accuracy 0.41 "
                              "< threshold 0.5") == ("failed_with_reason", "gate")
    assert classify("FAILED", "LaunchError: rank 0 exited with code 1; … OSError: [Errno 28] No space left on "
                              "device") == ("failed_with_reason", "disk")
    assert classify("FAILED", "LaunchError: rank 0 exited with code -9") == ("failed_with_reason", "rank")
    assert classify("FAILED", "StorageError: put s3://b/runs/x/eval.json: SlowDown") == (
        "failed_with_reason", "storage")
    assert classify("CRASHED", "Execution was aborted by a termination signal.") == ("failed_with_reason", "signal")
    assert classify("CRASHED", "") == ("other", None)
    assert classify("RUNNING", "") == ("other", None)


def test_temp_files_are_found_by_name(tmp_path):
    (tmp_path / "runs" / "r1" / ".mirror-spool").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "checkpoints").mkdir()
    (tmp_path / "runs" / "r1" / "checkpoints" / ".partial-step-00000005.ckpt").write_bytes(b"x")
    (tmp_path / "runs" / "r1" / "checkpoints" / "step-00000005.ckpt").write_bytes(b"x")
    assert temp_paths(tmp_path) == ["runs/r1/.mirror-spool", "runs/r1/checkpoints/.partial-step-00000005.ckpt"]
    assert temp_keys(["releases/m/v1/.writing", "releases/m/v1/model.mindir", "runs/r/.partial-1-a-x"]) == [
        "releases/m/v1/.writing", "runs/r/.partial-1-a-x"]


def _release(root, version: str, files: dict[str, bytes]) -> None:
    prefix = root / "releases" / "sknet-tiny" / version
    prefix.mkdir(parents=True)
    for name, data in files.items():
        (prefix / name).write_bytes(data)
    manifest = {"files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}}
    (prefix / "manifest.json").write_text(json.dumps(manifest))


def test_releases_are_checked_object_by_object_and_latest_must_name_a_complete_one(tmp_path):
    store = LocalStore(tmp_path)
    _release(tmp_path, "good", {"model.mindir": b"m" * 10, "lineage.json": b"{}"})
    _release(tmp_path, "changed", {"model.mindir": b"m" * 10})
    (tmp_path / "releases/sknet-tiny/changed/model.mindir").write_bytes(b"M" * 10)  # same size, other bytes
    _release(tmp_path, "missing", {"model.mindir": b"m" * 7})
    (tmp_path / "releases/sknet-tiny/missing/model.mindir").unlink()
    (tmp_path / "releases/sknet-tiny/cut-off").mkdir()
    (tmp_path / "releases/sknet-tiny/cut-off/model.mindir").write_bytes(b"x")  # no manifest: not a release
    report = verify_prefixes(store, "releases/sknet-tiny", tmp_path)
    assert report["complete"] == ["good"] and report["unpublished"] == ["cut-off"]
    assert set(report["broken"]) == {"changed", "missing"} and report["lost_bytes"] == 17

    assert latest_check(store, report["complete"]) == {"version": None, "ok": True}
    (tmp_path / "releases/sknet-tiny/LATEST").write_text(json.dumps({"version": "good"}))
    assert latest_check(store, report["complete"])["ok"]
    (tmp_path / "releases/sknet-tiny/LATEST").write_text(json.dumps({"version": "changed"}))
    assert not latest_check(store, report["complete"])["ok"]


def test_a_mirrored_checkpoint_counts_once_its_record_is_there(tmp_path):
    checkpoints = tmp_path / "runs" / "r1" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for step in (5, 10):
        (checkpoints / f"step-{step:08d}.ckpt").write_bytes(b"c" * step)
    (checkpoints / "step-00000005.ckpt.sha256").write_text("{}")  # step 10's record is not uploaded yet
    assert mirrored_steps(LocalStore(tmp_path), "r1") == {5: 5}


def test_the_proxy_fault_rate_is_seeded_and_comes_after_the_leading_faults():
    def pattern(proxy, n):
        return [proxy._next_fault() is not None for _ in range(n)]

    proxies = [FaultProxy(1, faults=2, rate=0.5, seed=7), FaultProxy(1, faults=2, rate=0.5, seed=7),
               FaultProxy(1, rate=0.0, seed=7)]
    try:
        first, second = pattern(proxies[0], 200), pattern(proxies[1], 200)
        assert first == second and first[:2] == [True, True] and 60 < sum(first[2:]) < 140
        assert proxies[0].injected == sum(first)
        assert not any(pattern(proxies[2], 50))
        proxies[2].rate = 1.0  # raised for a while…
        assert all(pattern(proxies[2], 5))
        proxies[2].rate = 0.0  # …and lowered again
        assert not any(pattern(proxies[2], 5))
    finally:
        for proxy in proxies:
            proxy.close()


def test_the_bench_signals_a_process_only_while_its_pid_still_names_it():
    import signal
    import subprocess
    import sys

    import psutil

    from bench.chaos.processes import send_signal

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        found = {"pid": sleeper.pid, "started": psutil.Process(sleeper.pid).create_time()}
        assert send_signal({**found, "started": found["started"] - 5}, signal.SIGKILL) is False  # a reused PID
        assert sleeper.poll() is None
        assert send_signal(found, signal.SIGKILL) is True
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        sleeper.kill()
