"""MindSpore's compile cache for a run: a resumed or retried run loads its graph instead of compiling it again
(minutes for SKNet-50 on Ascend); with `SKNET_COMPILE_CACHE_DIR` set, so does every later run on this host
that compiles the same graph.

MindSpore validates a cache only against the entry script and the files it imports that are not on `sys.path`
(`mindspore/graph/api.py`, `_get_compile_cache_dep_files`): for `python -m sknet` that is `__main__.py` alone;
nor does it check parameter shapes (a cached graph of a shorter run indexes past a longer run's learning
rates), nor the platform the graph was compiled for. So a cache entry is a directory named by a digest of this
package's source, the MindSpore version, the config less `NOT_IN_GRAPH`, the dataset's training-record count
(with `data.num_train_samples` unset, it sets the steps per epoch) and, on Ascend, the platform (`platform_identity`:
the CANN toolkit's and the driver's version.info and the chip): an image rebuilt on another CANN, or a host with
another driver, compiles (and fills kernel_meta) anew.

MindSpore never uses the shared directory itself: a run copies a shared entry's files into its own
`compile-cache/` before it compiles, and after it trained adds the files of its own entry that the shared one
lacks (a rank's files are named by its role: a launched rank's differ from a lone `sknet train`'s), each copied
under a temporary name and renamed into place, so concurrent runs read only whole files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

SHARED_CACHE_ENV = "SKNET_COMPILE_CACHE_DIR"
_OWN_ENTRIES: set[Path] = set()  # the entries `use_compile_cache` chose in this process: the only ones shared

# Config keys that cannot change the compiled graph: where things are, how long to wait, what happens after
# training. Every other key (model, data shape, batch, optimizer and schedule values, epochs: the learning-rate
# array's length, ranks, sink and cadence) names the compile cache, since MindSpore does not check them.
NOT_IN_GRAPH = ("data.uri", "data.allowed_prefixes", "storage.", "train.output_dir", "train.checkpoint_mirror",
                "gate.", "export.", "launch.timeout_minutes", "launch.stop_grace_seconds", "launch.rank_table",
                "launch.stall_timeout_seconds",
                "launch.server_id", "launch.master_addr", "launch.master_port")


def use_compile_cache(run_cache: Path, config: Mapping[str, Mapping], train_records: int,
                      environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Turn on MindSpore's compile cache in the entry of `run_cache` for this graph (call before the first
    compile), filled from the shared directory if it has the entry; other entries of `run_cache` are stale and
    removed. Returns the entry, or None when the cache stays off: a process without an entry script
    (`python -c`, an interactive session) runs without it. An operator's own `MS_COMPILER_CACHE_ENABLE` /
    `MS_COMPILER_CACHE_PATH` win (and are not shared)."""
    if environ.get("MS_COMPILER_CACHE_ENABLE", "1") != "1" or not (sys.argv and Path(sys.argv[0]).is_file()):
        return None
    if "MS_COMPILER_CACHE_PATH" in environ:
        return Path(environ["MS_COMPILER_CACHE_PATH"])
    entry = run_cache / graph_digest(config, train_records, environ)
    if run_cache.is_dir():
        for stale in run_cache.iterdir():
            if stale != entry:
                shutil.rmtree(stale, ignore_errors=True)
    if shared := environ.get(SHARED_CACHE_ENV):
        _copy_missing(Path(shared) / entry.name, entry, "took the compiled graph from")
    environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    environ["MS_COMPILER_CACHE_PATH"] = str(entry)
    _OWN_ENTRIES.add(entry)
    return entry


def share_compile_cache(entry: Path | None, environ: Mapping[str, str] = os.environ) -> None:
    """After a run trained: the files of its entry the shared one lacks, copied there (a no-op without
    `SKNET_COMPILE_CACHE_DIR`, and for an operator's own `MS_COMPILER_CACHE_PATH`: not an entry of ours). A
    failure is logged, never raised: the run itself succeeded."""
    if entry not in _OWN_ENTRIES or not (shared := environ.get(SHARED_CACHE_ENV)):
        return
    _copy_missing(entry, Path(shared) / entry.name, "shared the compiled graph in")


ASCEND_DRIVER = Path("/usr/local/Ascend/driver")  # where the Ascend HDK installs the driver (and its version.info)


def platform_identity(config: Mapping[str, Mapping], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What the compiled graph and its kernels were built for beyond MindSpore: on Ascend the CANN toolkit's
    `$ASCEND_HOME_PATH/compiler/version.info` (the file MindSpore reads its CANN version from), the driver's
    `version.info` (`$ASCEND_DRIVER_PATH`, default /usr/local/Ascend/driver) and the chip (`launch.chip`, else the
    image's SKNET_ASCEND_CHIP); each as found ("absent" when missing). Other targets: nothing (MindSpore's
    version, in the digest already, is the platform)."""
    if config.get("train", {}).get("device_target") != "Ascend":
        return {}
    toolkit = environ.get("ASCEND_HOME_PATH")
    driver = Path(environ.get("ASCEND_DRIVER_PATH") or ASCEND_DRIVER)
    return {"cann": _version_info(Path(toolkit) / "compiler" / "version.info" if toolkit else None),
            "driver": _version_info(driver / "version.info"),
            "chip": str(config.get("launch", {}).get("chip") or environ.get("SKNET_ASCEND_CHIP", "")).upper()}


def _version_info(path: Path | None) -> str:
    """The `Version=` line of a CANN or driver version.info, else the file's sha256, or "absent"."""
    try:
        text = path.read_text(errors="replace") if path is not None else None
    except OSError:
        text = None
    if text is None:
        return "absent"
    versions = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.lower().startswith("version=")]
    return versions[0] if versions else hashlib.sha256(text.encode()).hexdigest()


def graph_digest(config: Mapping[str, Mapping], train_records: int, environ: Mapping[str, str] = os.environ) -> str:
    """sha256 (12 hex) of the `sknet` package's source, the installed MindSpore's version, the config keys that
    shape the graph, the dataset's training-record count and the platform (`platform_identity`)."""
    import json
    from importlib import metadata

    from sknet.training_key import code_version

    shaping = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()
               if not any(f"{section}.{key}" == rule or (rule.endswith(".") and f"{section}.".startswith(rule))
                          for rule in NOT_IN_GRAPH)}
    material = {"code": code_version(), "mindspore": metadata.version("mindspore"), "config": shaping,
                "train_records": train_records}
    if platform := platform_identity(config, environ):
        material["platform"] = platform
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _copy_missing(source: Path, target: Path, done: str) -> None:
    """Each file under `source` that `target` lacks, copied under a temporary name and renamed into place: a
    reader sees a whole file or none (a cache that lacks a file is a cache miss: MindSpore compiles)."""
    if not source.is_dir():
        return
    copied = 0
    try:
        for path in sorted(source.rglob("*")):
            destination = target / path.relative_to(source)
            if not path.is_file() or path.name.startswith(".") or destination.exists():
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            scratch = destination.with_name(f".{destination.name}.{os.getpid()}")
            shutil.copyfile(path, scratch)
            scratch.rename(destination)
            copied += 1
    except OSError as exc:
        log.warning("compile cache: copying %s to %s failed (%s); the run compiles as usual", source, target, exc)
        return
    if copied:
        log.info("%s %s (%d file(s))", done, source if done.startswith("took") else target, copied)
