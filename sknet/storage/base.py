"""What every store shares: the errors, the `Store` interface and its object types, manifests, and writes that
land whole (a temporary sibling renamed into place)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sknet.errors import SknetError
from sknet.storage.checksums import file_hash

MANIFEST = "manifest.json"
CHUNK = 8 * 2**20  # multipart part size, and the read block for hashing
MULTIPART_THRESHOLD = 64 * 2**20  # CIFAR-10 files (30.7 MB) go up in one part, with a full sha256 checksum
LOCK_PREFIX = ".lock-"  # LocalStore: `.lock-<name>` beside an object written by put_bytes_if
PARTIAL_PREFIX = ".partial-"  # LocalStore: a write in progress, renamed into place when complete

log = logging.getLogger(__name__)


class StorageError(SknetError):
    """An object operation failed or an object is not what was expected."""


class PermanentStorageError(StorageError):
    """A storage failure that trying again cannot fix: an invalid URI or key, a malformed object."""


class IncompleteError(PermanentStorageError):
    """A prefix has no manifest: its publication never finished."""


class WriteConflict(StorageError):
    """A conditional write lost: another writer changed (or created) the object since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the tag a conditional write compares (S3: the ETag; LocalStore: the sha256)."""

    data: bytes
    tag: str


class Store(Protocol):
    uri: str

    def get(self, key: str, dest: Path) -> None: ...
    def put(self, src: Path, key: str) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, data: bytes, key: str) -> None: ...
    def get_versioned(self, key: str) -> Versioned | None: ...
    def put_bytes_if(self, data: bytes, key: str, tag: str | None) -> str: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def verify(self, key: str, size: int, sha256: str, local: Path | None = None) -> None: ...
    def abort_incomplete_uploads(self, prefix: str) -> int: ...


def sha256_file(path: Path) -> str:
    return file_hash(path, "sha256")


def join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key.lstrip('/')}" if prefix else key.lstrip("/")


_NOTED: set[tuple] = set()  # (capability, endpoint, bucket) a store was found to lack, already logged


def _note_once(what: tuple, message: str) -> None:
    """Log a store's missing capability once per process, not once per object."""
    if what not in _NOTED:
        _NOTED.add(what)
        log.warning(message)


def _error_code(exc: Exception) -> str | None:
    """The S3 error code of a botocore ClientError (`NoSuchKey`, `PreconditionFailed`, …), else None."""
    return (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")


def _check(where: str, key: str, actual_size: int, size: int, actual_digest: str, digest: str) -> None:
    _check_size(where, key, actual_size, size)
    if actual_digest != digest:
        raise _content_differs(where, key)


def _check_size(where: str, key: str, actual_size: int, size: int) -> None:
    if actual_size != size:
        raise StorageError(f"{where}/{key}: {actual_size:,} bytes, expected {size:,}")


def _content_differs(where: str, key: str) -> StorageError:
    return StorageError(f"{where}/{key}: content differs from the manifest (sha256 mismatch)")


def _copy_atomic(source: Path, target: Path) -> None:
    write_atomic(target, lambda partial: shutil.copyfile(source, partial))


def write_atomic(target: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a temporary sibling, which then replaces `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        write(partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def read_manifest(store: Store, prefix: str) -> dict:
    key = join(prefix, MANIFEST)
    if (held := store.get_versioned(key)) is None:  # one request, not a HEAD and then a GET
        raise IncompleteError(f"{store.uri}/{prefix}: no {MANIFEST}; the prefix is incomplete or not published")
    try:
        return json.loads(held.data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PermanentStorageError(f"{store.uri}/{key}: not valid JSON ({exc})") from None

