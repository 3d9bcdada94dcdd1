"""Fetching a staged dataset into the digest-keyed local cache, and checking a cached copy (see `sknet.data.stage`
for the cache layout and its concurrency)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sknet.data.layout import (
    LAYOUT_DIR,
    check_batch_file,
)
from sknet.data.manifest import manifest_digest, read_dataset_manifest, split_dataset_uri
from sknet.errors import DataError
from sknet.storage import (
    MANIFEST,
    Store,
    join,
    sha256_file,
    write_atomic,
)
from sknet.storage.locks import exclusive_lock

log = logging.getLogger(__name__)


VERIFIED_MARKER = ".verified"

SAMPLE_BYTES = 2**20  # a cache hit hashes the first, middle and last MiB of each file

def fetch(uri: str, store: Store, cache: Path, *, workers: int = 4) -> tuple[Path, str]:
    """Local verified copy of a staged dataset: (layout directory, digest). No request at all on a cache hit.

    Everything happens under the digest's lock (`<cache>/<digest>.lock`): of two fetches of one digest, in
    threads or processes, one downloads and the other waits, then finds the verified copy and reuses it. A
    copy with a valid `.verified` marker is never deleted or replaced (see the module docstring); a hit that
    fails its checks is refused with a `DataError` naming the file.
    """
    _, digest = split_dataset_uri(uri)
    final = Path(cache) / digest / LAYOUT_DIR

    def waiting(holder: str) -> None:
        log.info("dataset %s: waiting for %s, which is fetching it into %s", digest[:12], holder, cache)

    with exclusive_lock(Path(cache) / f"{digest}.lock", on_wait=waiting):
        if _marked_verified(final, digest):
            check_cached_copy(final, digest, store)
            log.info("dataset %s: verified copy in cache %s", digest[:12], final)
            return final, digest
        _download_copy(final, digest, store, workers)
    return final, digest

def _marked_verified(final: Path, digest: str) -> bool:
    marker = final / VERIFIED_MARKER
    return marker.is_file() and marker.read_text().strip() == digest

def _download_copy(final: Path, digest: str, store: Store, workers: int) -> None:
    """Download, check and record every file in a partial directory, then rename it to `final`.

    Called under the digest lock with no verified copy in place, so what is there is debris: a `.partial-*`
    directory of a fetch that was killed, or a `final` without a valid marker (never served: the marker is
    written before the rename that gives a copy its name). Both are removed.
    """
    manifest = read_dataset_manifest(store, digest)
    _check_listing(store, digest, manifest)
    for debris in [*final.parent.glob(".partial-*"), *([final] if final.exists() else [])]:
        if debris.is_dir():
            shutil.rmtree(debris)
        else:
            debris.unlink()
    partial = final.parent / f".partial-{os.getpid()}"
    partial.mkdir(parents=True)
    try:
        def get_one(name: str) -> None:
            store.get(join(digest, name), partial / name)
            check_fetched_file(partial / name, name, manifest["files"][name], f"{store.uri}/{digest}/{name}")
            log.info("fetched %s (%s bytes)", name, f"{manifest['files'][name]['size']:,}")

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(get_one, sorted(manifest["files"])))
        _write_cache_record(final.parent / MANIFEST, manifest, partial)
        (partial / VERIFIED_MARKER).write_text(digest + "\n")
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

def sampled_sha256(path: Path, sample_bytes: int = SAMPLE_BYTES) -> str:
    """sha256 of a file's first, middle and last `sample_bytes` (the whole file when it is not larger)."""
    size = path.stat().st_size
    if size <= 3 * sample_bytes:
        return sha256_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for offset in (0, (size - sample_bytes) // 2, size - sample_bytes):
            stream.seek(offset)
            digest.update(stream.read(sample_bytes))
    return digest.hexdigest()

def _write_cache_record(path: Path, manifest: dict, layout: Path) -> None:
    """The staged manifest plus each file's `sampled_sha256`, taken from files just checked in full."""
    sampled = {name: sampled_sha256(layout / name) for name in sorted(manifest["files"])}
    record = {**manifest, "cache": {"sample_bytes": SAMPLE_BYTES, "sampled_sha256": sampled}}
    write_atomic(path, lambda partial: partial.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n"))

def check_cached_copy(final: Path, digest: str, store: Store) -> None:
    """A cache hit's checks: the recorded file table hashes to `digest`; each file has its size and sampled sha256.

    A copy without a record (fetched by an older version) is checked in full against the store's manifest
    once, its only requests, and the record is written. A failed check raises a `DataError` naming the
    file; the copy is left in place (a run may be reading it) and the message says how to replace it.
    """
    record_path = final.parent / MANIFEST
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        _adopt_unrecorded_copy(final, digest, store)
        return
    except ValueError as exc:
        raise _bad_copy(final, f"{record_path}: not valid JSON ({exc})") from None
    files, cache = record.get("files"), record.get("cache") or {}
    if not isinstance(files, dict) or manifest_digest(files) != digest:
        raise _bad_copy(final, f"{record_path}: its file table does not hash to {digest}")
    sample_bytes, sampled = cache.get("sample_bytes", SAMPLE_BYTES), cache.get("sampled_sha256", {})
    for name, entry in sorted(files.items()):
        path = final / name
        size = path.stat().st_size if path.is_file() else None
        if size != entry["size"]:
            raise _bad_copy(final, f"{path}: {'missing' if size is None else f'{size:,} bytes'}, "
                                   f"the manifest says {entry['size']:,}")
        if sampled_sha256(path, sample_bytes) != sampled.get(name):
            raise _bad_copy(final, f"{path}: content differs from the copy that was fetched and verified "
                                   f"(sha256 of its first, middle and last {sample_bytes:,} bytes)")

def _adopt_unrecorded_copy(final: Path, digest: str, store: Store) -> None:
    manifest = read_dataset_manifest(store, digest)
    for name, entry in sorted(manifest["files"].items()):
        path = final / name
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise _bad_copy(final, f"{path}: missing or different from {store.uri}/{digest}/{name}")
    _write_cache_record(final.parent / MANIFEST, manifest, final)
    log.info("dataset %s: cached copy %s checked in full and recorded", digest[:12], final)

def _bad_copy(final: Path, what: str) -> DataError:
    return DataError(f"{what}: the cached dataset copy is corrupted and is refused. It is not deleted "
                     f"automatically, because a run may be reading it: once no run uses it, remove "
                     f"{final.parent} and fetch again (or fetch into another cache directory)")

def _check_listing(store: Store, digest: str, manifest: dict) -> None:
    listed = {o.key[len(digest) + 1:]: o.size for o in store.list(digest + "/")}
    listed.pop(MANIFEST, None)
    expected = {name: entry["size"] for name, entry in manifest["files"].items()}
    for name in sorted(set(expected) - set(listed)):
        raise DataError(f"{store.uri}/{digest}/{name}: listed in the manifest but missing from the store")
    for name in sorted(set(listed) - set(expected)):
        raise DataError(f"{store.uri}/{digest}/{name}: extra object not in the manifest")
    for name, size in sorted(listed.items()):
        if size != expected[name]:
            raise DataError(f"{store.uri}/{digest}/{name}: {size:,} bytes in the store, manifest says "
                            f"{expected[name]:,}")

def check_fetched_file(path: Path, name: str, entry: dict, where: str) -> None:
    """A fetched file against its manifest `entry`: size, sha256, and a .bin's records; errors name `where`."""
    size = path.stat().st_size
    if size != entry["size"]:
        raise DataError(f"{where}: {size:,} bytes fetched, manifest says {entry['size']:,}")
    if sha256_file(path) != entry["sha256"]:
        raise DataError(f"{where}: sha256 differs from the manifest (corrupted object)")
    if name.endswith(".bin"):
        check_batch_file(path)

def verify_remote(uri: str, store: Store) -> dict:
    """Check a staged dataset in place: manifest present, object set and sizes, stored checksums."""
    _, digest = split_dataset_uri(uri)
    manifest = read_dataset_manifest(store, digest)
    _check_listing(store, digest, manifest)
    for name, entry in sorted(manifest["files"].items()):
        store.verify(join(digest, name), entry["size"], entry["sha256"])
    return {"uri": uri, "digest": digest, "files": len(manifest["files"]), "synthetic": manifest.get("synthetic")}
