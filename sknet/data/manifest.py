"""A dataset's manifest: its file table (size, sha256, records of each file), the digest that names it, and the
dataset URIs built from it (`<store>/<digest>`)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from sknet.data.layout import (
    META_FILE,
    RECORD_BYTES,
    SYNTHETIC_MARKER,
    TEST_FILE,
    TRAIN_FILES,
    verify_layout,
)
from sknet.errors import DataError
from sknet.storage import (
    MANIFEST,
    Store,
    read_manifest,
    sha256_file,
)

log = logging.getLogger(__name__)


FORMAT = "cifar10-binary"

DATASETS_PREFIX = "datasets/cifar10"  # where a store keeps its staged datasets: <store>/datasets/cifar10/<digest>

DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")

DATASET_FILES = frozenset([*TRAIN_FILES, TEST_FILE, META_FILE, SYNTHETIC_MARKER])  # all a manifest may name

def split_dataset_uri(uri: str) -> tuple[str, str]:
    """`<store uri>/<digest>` → (store uri, digest); the digest must be 64 lowercase hex characters."""
    store_uri, _, digest = uri.rstrip("/").rpartition("/")
    if not store_uri or not DIGEST_PATTERN.fullmatch(digest):
        raise DataError(f"dataset URI {uri!r}: expected <store>/<digest>, the digest 64 lowercase hex "
                        f"characters (as printed by `sknet data stage`), got {digest!r}")
    return store_uri, digest

def manifest_digest(files: dict) -> str:
    """The dataset digest: sha256 of the manifest's file table in canonical JSON."""
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

def read_dataset_manifest(store: Store, digest: str) -> dict:
    """The manifest of a staged dataset, refused unless it names only layout files and hashes to `digest`.

    A bucket is not trusted: a manifest naming `../x` would otherwise be written outside the cache.
    """
    manifest = read_manifest(store, digest)
    where = f"{store.uri}/{digest}/{MANIFEST}"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise DataError(f"{where}: no file table; expected a manifest written by `sknet data stage`")
    for name in sorted(files, key=str):
        if name not in DATASET_FILES:
            raise DataError(f"{where}: names {name!r}, which is not a CIFAR-10 layout file "
                            f"(expected only {', '.join(sorted(DATASET_FILES))}); refusing to fetch")
        entry = files[name]
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and DIGEST_PATTERN.fullmatch(entry["sha256"])):
            raise DataError(f"{where}: entry {name!r} is {entry!r}; expected a size in bytes and a sha256")
    if manifest_digest(files) != digest:
        raise DataError(f"{where}: its file table hashes to {manifest_digest(files)}, not to the digest in "
                        f"the URI; the manifest was altered after staging")
    return manifest

def dataset_manifest(directory: Path) -> dict:
    """File table (size, sha256, records) of a verified local layout, and its digest."""
    report = verify_layout(directory)
    names = [*TRAIN_FILES, TEST_FILE, META_FILE] + ([SYNTHETIC_MARKER] if report.synthetic else [])
    files = {}
    for name in names:
        path = report.path / name
        entry = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        if name.endswith(".bin"):
            entry["records"] = entry["size"] // RECORD_BYTES
        files[name] = entry
    digest = manifest_digest(files)
    return {"format": FORMAT, "digest": digest, "synthetic": report.synthetic, "files": files}
