"""`LocalStore`: a directory used like a bucket (the embedded default, `file://`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sknet.storage.base import (
    LOCK_PREFIX,
    PARTIAL_PREFIX,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    Versioned,
    WriteConflict,
    _check,
    _copy_atomic,
    sha256_file,
    write_atomic,
)
from sknet.storage.locks import exclusive_lock
from sknet.storage.uris import FILE_SCHEME


class LocalStore:
    """A directory used like a bucket; each write lands under a temporary name and is renamed.

    A key may not lead outside the root: it is resolved (`..` and symlinks followed) and refused
    (`PermanentStorageError`) unless it stays under the root. The file system's errors (a full disk, a
    permission) are `StorageError`s naming the operation and the object, as S3's are.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = f"{FILE_SCHEME}{self.root}"

    def _path(self, key: str) -> Path:
        try:
            path = (self.root / key).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
            raise PermanentStorageError(f"key {key!r} of {self.uri}: not a usable path ({exc})") from None
        if self.root not in path.parents and path != self.root:
            raise PermanentStorageError(f"key {key!r} resolves to {path}, outside the store's root {self.root}: "
                                        "keys must stay under the root")
        return path

    def _missing(self, op: str, key: str) -> StorageError:
        return StorageError(f"{op} {self.uri}/{key}: no such object")

    @contextmanager
    def _os_errors(self, op: str, key: str) -> Iterator[None]:
        """The file system's errors in `op` on `key` as a `StorageError` (a retry may find space or the disk back)."""
        try:
            yield
        except OSError as exc:
            raise StorageError(f"{op} {self.uri}/{key}: {exc.strerror or exc}") from exc

    def get(self, key: str, dest: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise self._missing("get", key)
        with self._os_errors("get", key):
            _copy_atomic(source, Path(dest))

    def put(self, src: Path, key: str) -> None:
        target = self._path(key)
        with self._os_errors("put", key):
            _copy_atomic(Path(src), target)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise self._missing("get", key)
        with self._os_errors("get", key):
            return path.read_bytes()

    def put_bytes(self, data: bytes, key: str) -> None:
        target = self._path(key)
        with self._os_errors("put", key):
            write_atomic(target, lambda partial: partial.write_bytes(data))

    def get_versioned(self, key: str) -> Versioned | None:
        path = self._path(key)
        with self._os_errors("get", key):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def put_bytes_if(self, data: bytes, key: str, tag: str | None) -> str:
        """Write `data` only if the object is still at version `tag` (None: only if there is none)."""
        path = self._path(key)
        # one conditional write at a time, across threads (each open is its own lock) and processes of this
        # host or of any host sharing the file system
        with self._os_errors("put", key), exclusive_lock(path.with_name(LOCK_PREFIX + path.name)):
            current = self.get_versioned(key)
            if (current.tag if current else None) != tag:
                raise WriteConflict(f"put {self.uri}/{key}: changed by another writer since it was read")
            self.put_bytes(data, key)
        return hashlib.sha256(data).hexdigest()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        with self._os_errors("list", prefix):
            return sorted(
                (ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size)
                 for p in base.rglob("*") if p.is_file() and not p.name.startswith((PARTIAL_PREFIX, LOCK_PREFIX))),
                key=lambda o: o.key,
            )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._os_errors("delete", key):
            path.unlink(missing_ok=True)

    def verify(self, key: str, size: int, sha256: str, local: Path | None = None) -> None:
        path = self._path(key)
        if not path.is_file():
            raise self._missing("verify", key)
        with self._os_errors("verify", key):
            actual_size, actual_sha256 = path.stat().st_size, sha256_file(path)
        _check(self.uri, key, actual_size, size, actual_sha256, sha256)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Nothing to abort: a LocalStore write is the rename of a finished file."""
        return 0

