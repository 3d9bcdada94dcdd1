"""The compile cache shared between runs (SKNET_COMPILE_CACHE_DIR): a run of a graph another run compiled loads
it, trains the same weights, and nothing half-copied is ever read."""

import json
import sys

from conftest import run_sknet
from sknet.config import load_config
from sknet.training.compile_cache import (SHARED_CACHE_ENV, _copy_missing, graph_digest, platform_identity,
                                         share_compile_cache, use_compile_cache)

TWO_STEPS = ["data.num_train_samples=64", "train.epochs=1"]


def test_a_run_loads_the_graph_an_earlier_run_compiled_and_trains_the_same_weights(synthetic_data, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path / "shared"))
    runs = []
    for name in ("first", "second"):
        proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                         f"train.output_dir={tmp_path / name}", *TWO_STEPS)
        runs.append((json.loads((tmp_path / name / "rank-0.json").read_text()), proc.stderr))
    [entry] = (tmp_path / "shared").iterdir()
    assert sorted(p.name for p in entry.rglob("*") if p.is_file()) == ["compile_cache_0.mindir",
                                                                      "compile_dependency.hash"]
    assert f"shared the compiled graph in {entry} (2 file(s))" in runs[0][1]
    assert f"took the compiled graph from {entry} (2 file(s))" in runs[1][1]
    assert "shared the compiled graph" not in runs[1][1]  # it had nothing the shared entry lacked
    assert runs[0][0]["parameters_sha256"] == runs[1][0]["parameters_sha256"]


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


def test_files_are_added_whole_and_never_replace_what_is_there(tmp_path):
    source, target = tmp_path / "run" / "abc", tmp_path / "shared" / "abc"
    (source / "rank_0" / "graph_cache").mkdir(parents=True)
    (source / "rank_0" / "graph_cache" / "compile_cache_0.mindir").write_bytes(b"graph")
    (source / "rank_0" / "graph_cache" / "compile_dependency.hash").write_bytes(b"new hash")
    (target / "rank_0" / "graph_cache").mkdir(parents=True)
    (target / "rank_0" / "graph_cache" / "compile_dependency.hash").write_bytes(b"old hash")
    _copy_missing(source, target, "shared the compiled graph in")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "rank_0/graph_cache/compile_cache_0.mindir", "rank_0/graph_cache/compile_dependency.hash"]
    assert (target / "rank_0" / "graph_cache" / "compile_dependency.hash").read_bytes() == b"old hash"


def test_nothing_is_shared_without_the_variable_or_when_an_operator_chose_the_cache_path(tmp_path, monkeypatch):
    config, shared = load_config("cpu-smoke").to_dict(), tmp_path / "shared"
    monkeypatch.setattr(sys, "argv", [__file__])  # a process with an entry script (an xdist worker has none)

    def compiled(entry):
        (entry / "rank_0").mkdir(parents=True, exist_ok=True)
        (entry / "rank_0" / "compile_cache_0.mindir").write_bytes(b"graph")
        return entry

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
    assert (shared / entry.name / "rank_0" / "compile_cache_0.mindir").read_bytes() == b"graph"
