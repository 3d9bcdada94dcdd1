"""The compile cache shared between runs (SKNET_COMPILE_CACHE_DIR): a run of a graph another run compiled loads
it, trains the same weights, and nothing half-copied is ever read."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_sknet
from sknet.config import load_config
from sknet.training.compile_cache import (
    SHARED_CACHE_ENV,
    graph_digest,
    platform_identity,
    share_compile_cache,
    use_compile_cache,
)

TWO_STEPS = ["data.num_train_samples=64", "train.epochs=1"]


def test_a_run_loads_the_graph_an_earlier_run_compiled_and_trains_the_same_weights(synthetic_data, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path / "shared"))
    runs = []
    for name in ("first", "second"):
        proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                         f"train.output_dir={tmp_path / name}", *TWO_STEPS)
        runs.append((json.loads((tmp_path / name / "rank-0.json").read_text()), proc.stderr))
    [entry] = [p for p in (tmp_path / "shared").iterdir() if p.is_dir()]
    assert sorted(p.name for p in entry.rglob("*") if p.is_file()) == ["compile_cache_0.mindir",
                                                                      "compile_dependency.hash"]
    assert f"shared the compiled graph in {entry} (2 file(s))" in runs[0][1]
    assert f"took the compiled graph from {entry} (2 file(s))" in runs[1][1]
    assert "shared the compiled graph" not in runs[1][1]  # it had nothing the shared entry lacked
    assert runs[0][0]["parameters_sha256"] == runs[1][0]["parameters_sha256"]


def test_another_configs_graph_under_this_configs_key_is_refused_and_this_config_trains_its_own(synthetic_data,
                                                                                               tmp_path):
    """Issue #27 §1: config B's compiled graph (label smoothing 0.4) placed under config A's key trained B's loss
    with A's name. Without the record of the run that compiled it the entry is dropped: A compiles its own graph,
    so its weights are not B's (with B's graph, A's run would train B's loss to B's very weights)."""
    shared = tmp_path / "shared"

    def train(name: str, cache: str, *extra: str) -> tuple[str, str]:
        env = {**os.environ, SHARED_CACHE_ENV: cache, "GLOG_v": "3"}
        proc = subprocess.run([sys.executable, "-m", "sknet", "train", "--config", "cpu-smoke", "--set",
                               f"data.uri={synthetic_data}", f"train.output_dir={tmp_path / name}", *TWO_STEPS,
                               *extra], capture_output=True, text=True, env=env, timeout=600, check=True)
        return json.loads((tmp_path / name / "rank-0.json").read_text())["parameters_sha256"], proc.stderr

    b_weights, _ = train("b", str(shared), "train.label_smoothing=0.4")
    [b_entry] = [p for p in shared.iterdir() if p.is_dir()]
    a_key = graph_digest(load_config("cpu-smoke", TWO_STEPS).to_dict(), 50000)
    assert a_key != b_entry.name
    b_entry.rename(shared / a_key)  # B's graph, A's name; B's record still names B's key
    a_weights, log = train("a", str(shared))
    assert a_weights != b_weights
    assert f"the shared entry {shared / a_key} has no valid record" in log and "took the compiled graph" not in log
    record = json.loads((shared / f"{a_key}.json").read_text())  # A's own graph and record replaced B's
    assert record["key"] == a_key and record["files"]


def test_the_graph_digest_follows_what_shapes_the_graph_and_the_training_set_size():
    cfg = load_config("cpu-smoke").to_dict()
    moved = load_config("cpu-smoke", ["data.uri=/elsewhere", "train.output_dir=/other", "gate.threshold=0.9"])
    assert graph_digest(cfg, 50000) == graph_digest(moved.to_dict(), 50000)
    assert graph_digest(cfg, 50000) != graph_digest(cfg, 40000)  # with num_train_samples unset: steps per epoch
    assert graph_digest(cfg, 50000) != graph_digest(load_config("cpu-smoke", ["train.epochs=4"]).to_dict(), 50000)


def test_an_ascend_graph_is_keyed_by_the_cann_the_driver_and_the_chip_it_was_compiled_for(tmp_path):
    """Issue #26 §4: an image rebuilt on another CANN, a host with another driver or another chip compiles anew."""
    toolkit, driver = tmp_path / "toolkit", tmp_path / "driver"
    (toolkit / "compiler").mkdir(parents=True)
    driver.mkdir()
    (toolkit / "compiler" / "version.info").write_text("Version=8.3.RC1\nInnerversion=V100R001C23\n")
    (driver / "version.info").write_text("Version=25.2.0\n")
    env = {"ASCEND_HOME_PATH": str(toolkit), "ASCEND_DRIVER_PATH": str(driver), "SKNET_ASCEND_CHIP": "910b"}
    cfg = load_config("cifar10-ascend8").to_dict()
    first = graph_digest(cfg, 50000, env)
    assert platform_identity(cfg, env) == {"cann": "8.3.RC1", "driver": "25.2.0", "chip": "910B"}
    assert graph_digest(cfg, 50000, dict(env)) == first  # the same platform: the same entry
    (toolkit / "compiler" / "version.info").write_text("Version=9.1.0\n")
    newer_cann = graph_digest(cfg, 50000, env)
    (driver / "version.info").write_text("Version=25.3.RC1\n")
    newer_driver = graph_digest(cfg, 50000, env)
    other_chip = graph_digest(cfg, 50000, {**env, "SKNET_ASCEND_CHIP": "910"})
    assert len({first, newer_cann, newer_driver, other_chip}) == 4
    cpu = load_config("cpu-smoke").to_dict()  # CPU: MindSpore's version is the platform; no Ascend file is read
    assert platform_identity(cpu, env) == {} and graph_digest(cpu, 50000, env) == graph_digest(cpu, 50000, {})


def compiled(entry: Path, files: dict[str, bytes] | None = None) -> Path:
    """`entry` as MindSpore leaves it after compiling (stand-in files)."""
    for name, data in (files or {"rank_0/graph_cache/compile_cache_0.mindir": b"graph"}).items():
        (entry / name).parent.mkdir(parents=True, exist_ok=True)
        (entry / name).write_bytes(data)
    return entry


@pytest.fixture
def entry_script(monkeypatch):
    monkeypatch.setattr(sys, "argv", [__file__])  # a process with an entry script (an xdist worker has none)


def test_a_shared_entry_is_recorded_and_taken_file_by_file_as_recorded(tmp_path, entry_script):
    config, shared = load_config("cpu-smoke").to_dict(), tmp_path / "shared"
    env = {SHARED_CACHE_ENV: str(shared)}
    first = compiled(use_compile_cache(tmp_path / "a", config, 50000, dict(env)))
    share_compile_cache(first, env)
    record = json.loads((shared / f"{first.name}.json").read_text())
    assert record["key"] == first.name
    assert record["files"] == {"rank_0/graph_cache/compile_cache_0.mindir": {
        "bytes": 5, "sha256": hashlib.sha256(b"graph").hexdigest()}}
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700  # made for this user alone
    second = use_compile_cache(tmp_path / "b", config, 50000, dict(env))
    assert (second / "rank_0" / "graph_cache" / "compile_cache_0.mindir").read_bytes() == b"graph"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "extra-unrecorded", "no-record", "other-key"])
def test_a_damaged_or_unrecorded_shared_entry_is_never_used_and_is_dropped(tmp_path, entry_script, caplog, damage):
    config, shared = load_config("cpu-smoke").to_dict(), tmp_path / "shared"
    env = {SHARED_CACHE_ENV: str(shared)}
    entry = compiled(use_compile_cache(tmp_path / "a", config, 50000, dict(env)))
    share_compile_cache(entry, env)
    graph = shared / entry.name / "rank_0" / "graph_cache" / "compile_cache_0.mindir"
    record = shared / f"{entry.name}.json"
    if damage == "truncated":
        graph.write_bytes(b"gra")
    elif damage == "garbage":
        graph.write_bytes(b"GRAPH")  # same size, other bytes
    elif damage == "extra-unrecorded":
        compiled(shared / entry.name, {"rank_0/graph_cache/foreign.mindir": b"foreign"})
    elif damage == "no-record":
        record.unlink()
    else:  # the record of another key placed under this one
        record.write_text(record.read_text().replace(entry.name, "0123456789ab"))
    taken = use_compile_cache(tmp_path / "b", config, 50000, dict(env))
    got = sorted(str(p.relative_to(taken)) for p in taken.rglob("*") if p.is_file()) if taken.exists() else []
    if damage == "extra-unrecorded":  # the recorded file verifies; the unrecorded one is never taken
        assert got == ["rank_0/graph_cache/compile_cache_0.mindir"]
        return
    assert got == []  # nothing half used: MindSpore compiles
    assert not (shared / entry.name).exists() and not record.exists()  # dropped: not an ERROR for every later run
    assert "is not used" in caplog.text or "no valid record" in caplog.text
    share_compile_cache(compiled(taken), env)  # this run's own graph takes its place
    assert use_compile_cache(tmp_path / "c", config, 50000, dict(env)) is not None
    assert (tmp_path / "c" / entry.name / "rank_0" / "graph_cache" / "compile_cache_0.mindir").read_bytes() == b"graph"


@pytest.mark.parametrize("mode, owner", [(0o777, None), (0o775, None), (0o700, 65534)])
def test_a_shared_directory_others_may_write_to_or_that_another_user_owns_is_not_used(tmp_path, entry_script, caplog,
                                                                                      mode, owner):
    config, shared = load_config("cpu-smoke").to_dict(), tmp_path / "shared"
    env = {SHARED_CACHE_ENV: str(shared)}
    share_compile_cache(compiled(use_compile_cache(tmp_path / "a", config, 50000, dict(env))), env)
    os.chmod(shared, mode)
    if owner is not None:
        os.chown(shared, owner, owner)
    taken = use_compile_cache(tmp_path / "b", config, 50000, dict(env))
    assert not taken.exists()  # compiles instead
    assert f"is not used: it belongs to uid {owner if owner is not None else os.geteuid()} with mode {mode:o}" in \
        caplog.text


def test_a_run_cache_that_is_a_link_is_unlinked_and_what_it_points_at_is_left_alone(tmp_path, entry_script):
    """Issue #27 §2: a `compile-cache/` linked to the host's graphs made the run delete all of them as stale."""
    host_graphs = compiled(tmp_path / "host" / "someone-elses-entry")
    run_cache = tmp_path / "run" / "compile-cache"
    run_cache.parent.mkdir()
    run_cache.symlink_to(tmp_path / "host")
    entry = use_compile_cache(run_cache, load_config("cpu-smoke").to_dict(), 50000, {})
    assert (host_graphs / "rank_0" / "graph_cache" / "compile_cache_0.mindir").read_bytes() == b"graph"
    assert not run_cache.is_symlink() and entry.parent == run_cache
    run_cache.mkdir()
    link = run_cache / "stale-link"  # an entry that is a link: unlinked, not emptied
    link.symlink_to(tmp_path / "host" / "someone-elses-entry")
    use_compile_cache(run_cache, load_config("cpu-smoke").to_dict(), 50000, {})
    assert not link.exists() and host_graphs.is_dir() and any(host_graphs.rglob("*.mindir"))


def test_a_full_disk_while_sharing_leaves_no_hidden_partial_file(tmp_path, entry_script, monkeypatch, caplog):
    import builtins
    import errno

    config, shared = load_config("cpu-smoke").to_dict(), tmp_path / "shared"
    env = {SHARED_CACHE_ENV: str(shared)}
    entry = compiled(use_compile_cache(tmp_path / "a", config, 50000, dict(env)), {"big.mindir": b"x" * (3 << 20)})
    real_open = builtins.open

    class Full:
        def __init__(self, stream):
            self.stream, self.written = stream, 0

        def write(self, chunk):
            if self.written:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += self.stream.write(chunk)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    def full_disk(path, mode="r", *args, **kwargs):
        stream = real_open(path, mode, *args, **kwargs)
        return Full(stream) if "w" in mode and str(path).startswith(str(shared)) else stream

    monkeypatch.setattr(builtins, "open", full_disk)
    share_compile_cache(entry, env)
    monkeypatch.undo()
    assert "No space left on device" in caplog.text
    assert [p for p in shared.rglob("*") if p.is_file()] == []  # no .big.mindir.<pid>, no record


def test_nothing_is_shared_without_the_variable_or_when_an_operator_chose_the_cache_path(tmp_path, entry_script):
    config, shared = load_config("cpu-smoke").to_dict(), tmp_path / "shared"

    operator = {SHARED_CACHE_ENV: str(shared), "MS_COMPILER_CACHE_PATH": str(tmp_path / "ops")}
    entry = compiled(use_compile_cache(tmp_path / "run", config, 50000, operator))
    assert entry == tmp_path / "ops"  # the operator's cache, used as it is
    share_compile_cache(entry, operator)
    assert not shared.exists()
    ours = {SHARED_CACHE_ENV: str(shared)}
    entry = compiled(use_compile_cache(tmp_path / "run", config, 50000, ours))
    assert ours["MS_COMPILER_CACHE_PATH"] == str(entry) and entry.parent == tmp_path / "run"
    share_compile_cache(entry, {})
    assert not shared.exists()
    share_compile_cache(entry, ours)
    assert (shared / entry.name / "rank_0" / "graph_cache" / "compile_cache_0.mindir").read_bytes() == b"graph"
