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

MindSpore never uses the shared directory itself, and what a run takes from it is checked first, since a cached
graph is code MindSpore runs without a question (issue #27 §1):
- the directory must belong to this process's user and be writable by nobody else (else it is not used at all);
- an entry is taken only with its record `<key>.json` (owned alike), written by the run that compiled the entry
  after copying its files in: the key it was compiled under and each file's size and sha256. A file is copied
  into the run's own `compile-cache/` under a temporary name, hashed while copied, and renamed into place only
  if it matches; an entry without a record, of another key, or with a file that does not match is dropped from
  the shared directory (this run compiles and shares its own in its place), never half used.
A run shares after it trained: the files of its entry the shared one lacks, each under a temporary name then
renamed (concurrent runs read only whole files; a failed copy — a full disk — removes its temporary file), then
the record. A rank's files are named by its role (a launched rank's differ from a lone `sknet train`'s).
Deleting never follows a link: stale entries of the run's cache are removed only as real directories inside it,
and a `compile-cache/` that is a link is unlinked, never emptied (issue #27 §2).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
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
    compile), filled from the shared directory if it holds a verified entry; other entries of `run_cache` are stale
    and removed. Returns the entry, or None when the cache stays off: a process without an entry script
    (`python -c`, an interactive session) runs without it. An operator's own `MS_COMPILER_CACHE_ENABLE` /
    `MS_COMPILER_CACHE_PATH` win (and are not shared)."""
    if environ.get("MS_COMPILER_CACHE_ENABLE", "1") != "1" or not (sys.argv and Path(sys.argv[0]).is_file()):
        return None
    if "MS_COMPILER_CACHE_PATH" in environ:
        return Path(environ["MS_COMPILER_CACHE_PATH"])
    entry = run_cache / graph_digest(config, train_records, environ)
    _clear_stale(run_cache, keep=entry)
    if (shared := environ.get(SHARED_CACHE_ENV)) and (directory := trusted_directory(Path(shared))) is not None:
        _take(directory, entry)
    environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    environ["MS_COMPILER_CACHE_PATH"] = str(entry)
    _OWN_ENTRIES.add(entry)
    return entry


def share_compile_cache(entry: Path | None, environ: Mapping[str, str] = os.environ) -> None:
    """After a run trained: the files of its entry the shared one lacks, copied there, then the entry's record (a
    no-op without `SKNET_COMPILE_CACHE_DIR`, for an untrusted one, and for an operator's own
    `MS_COMPILER_CACHE_PATH`: not an entry of ours). A failure is logged, never raised: the run itself succeeded."""
    if entry not in _OWN_ENTRIES or not (shared := environ.get(SHARED_CACHE_ENV)):
        return
    if (directory := trusted_directory(Path(shared), create=True)) is None or not entry.is_dir():
        return
    target = directory / entry.name
    try:
        files = dict(_verified_files(directory, entry.name) or {})
        copied = 0
        for path in sorted(p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()):
            name = str(path.relative_to(entry))
            if name in files or path.name.startswith("."):
                continue
            files[name] = _copy_hashed(path, target / name)
            copied += 1
        if copied:
            _write_record(directory, entry.name, files)
            log.info("shared the compiled graph in %s (%d file(s))", target, copied)
    except OSError as exc:
        log.warning("compile cache: sharing %s in %s failed (%s); the next run compiles as usual", entry,
                    directory, exc)


def trusted_directory(shared: Path, *, create: bool = False) -> Path | None:
    """`shared` if this process's user owns it and nobody else may write to it (a graph in it is code MindSpore
    will run), else None with a warning naming the owner and mode. `create` makes a missing one (mode 0700)."""
    try:
        if create and not shared.exists():
            shared.mkdir(mode=0o700, parents=True)
        found = shared.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("compile cache: %s=%s cannot be used (%s); compiling", SHARED_CACHE_ENV, shared, exc)
        return None
    if found.st_uid != os.geteuid() or found.st_mode & 0o022:
        log.warning("compile cache: %s=%s is not used: it belongs to uid %d with mode %o, but a compiled graph is code "
                    "this run would execute, so the directory must belong to uid %d and be writable by it alone "
                    "(chmod go-w); compiling", SHARED_CACHE_ENV, shared, found.st_uid, stat.S_IMODE(found.st_mode),
                    os.geteuid())
        return None
    return shared


def _take(directory: Path, entry: Path) -> None:
    """Copy the shared entry of `entry`'s key into `entry`, each file checked against the entry's record; an entry
    that fails (no record, another key, a file that differs) is dropped from the shared directory."""
    source = directory / entry.name
    files = _verified_files(directory, entry.name)
    if files is None:
        if source.exists() or _record_path(directory, entry.name).exists():
            log.warning("compile cache: the shared entry %s has no valid record of the run that compiled it; not "
                        "used, and dropped (this run shares its own)", source)
            _drop(directory, entry.name)
        return
    copied = 0
    try:
        for name, (size, digest) in sorted(files.items()):
            destination = entry / name
            if destination.is_file():
                continue
            if _copy_hashed(source / name, destination) != (size, digest):
                destination.unlink(missing_ok=True)
                raise ValueError(f"{source / name} is not the file its record lists (size {size}, sha256 "
                                 f"{digest[:12]}…)")
            copied += 1
    except (OSError, ValueError) as exc:
        log.warning("compile cache: the shared entry %s is not used (%s) and is dropped; compiling", source, exc)
        _clear_stale(entry.parent, keep=None)
        _drop(directory, entry.name)
        return
    if copied:
        log.info("took the compiled graph from %s (%d file(s))", source, copied)


def _record_path(directory: Path, key: str) -> Path:
    return directory / f"{key}.json"


def _verified_files(directory: Path, key: str) -> dict[str, tuple[int, str]] | None:
    """{relative path: (size, sha256)} of the record of entry `key`, if it is one: a regular file of ours, not
    writable by others, naming `key`, every path one inside the entry; else None."""
    import json

    path = _record_path(directory, key)
    try:
        found = path.lstat()
        if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o022:
            return None
        record = json.loads(path.read_text())
        files = record["files"]
        if record.get("key") != key or not isinstance(files, dict):
            return None
        checked = {}
        for name, value in files.items():
            parts = Path(name).parts
            if not parts or Path(name).is_absolute() or ".." in parts:
                return None
            size, digest = value["bytes"], value["sha256"]
            if not isinstance(size, int) or not isinstance(digest, str):
                return None
            checked[name] = (size, digest)
        return checked
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(directory: Path, key: str, files: Mapping[str, tuple[int, str]]) -> None:
    import json

    record = {"key": key, "files": {name: {"bytes": size, "sha256": digest} for name, (size, digest) in files.items()}}
    path = _record_path(directory, key)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        scratch.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.chmod(scratch, 0o600)
        scratch.rename(path)
    finally:
        scratch.unlink(missing_ok=True)


def _copy_hashed(source: Path, destination: Path) -> tuple[int, str]:
    """Copy `source` to `destination` under a temporary name, renamed into place: (bytes, sha256) of what was
    copied. A failure (a full disk) removes the temporary file; a file that is a link is refused."""
    if source.is_symlink():
        raise ValueError(f"{source} is a link")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = destination.with_name(f".{destination.name}.{os.getpid()}")
    digest, size = hashlib.sha256(), 0
    try:
        with open(source, "rb") as reader, open(scratch, "wb") as writer:
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
        scratch.rename(destination)
    finally:
        scratch.unlink(missing_ok=True)
    return size, digest.hexdigest()


def _drop(directory: Path, key: str) -> None:
    """Remove shared entry `key` and its record (as real files and directories only)."""
    _remove(directory / key)
    _record_path(directory, key).unlink(missing_ok=True)


def _clear_stale(run_cache: Path, keep: Path | None) -> None:
    """Every entry of the run's cache but `keep`. Never through a link: a `run_cache` that is a link is unlinked
    (what it points at is another directory's business), an entry that is one is unlinked, not emptied."""
    if run_cache.is_symlink():
        log.warning("compile cache: %s is a link to %s; unlinked, never emptied (a run keeps its own cache)",
                    run_cache, os.readlink(run_cache))
        run_cache.unlink()
        return
    if not run_cache.is_dir():
        return
    for stale in run_cache.iterdir():
        if stale != keep:
            _remove(stale)


def _remove(path: Path) -> None:
    """Remove `path`: a link or file unlinked, a directory removed without following the links inside it."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow links inside the tree


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

    from sknet.release.training_key import code_version

    shaping = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()
               if not any(f"{section}.{key}" == rule or (rule.endswith(".") and f"{section}.".startswith(rule))
                          for rule in NOT_IN_GRAPH)}
    material = {"code": code_version(), "mindspore": metadata.version("mindspore"), "config": shaping,
                "train_records": train_records}
    if platform := platform_identity(config, environ):
        material["platform"] = platform
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]
