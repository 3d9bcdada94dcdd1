"""Object storage behind one small interface: `S3Store` (any S3 endpoint) and `LocalStore` (file://).

Keys are relative to the store's root (`s3://bucket/prefix` or `file:///path`). A set of files is
published atomically by `publish`: upload everything, verify every object, write `manifest.json` last.
A prefix without a manifest is incomplete and readers must treat it so (`read_manifest`).
Errors name the operation and the object, never credentials.

Small objects that several writers may race on (a `LATEST` pointer, a claim) are written with
`put_bytes_if`, a compare-and-swap on the version `get_versioned` returned: S3's conditional writes
(`If-Match: <ETag>`, `If-None-Match: *`), and for a LocalStore the same check under an exclusive
`flock` on a hidden `.lock-<name>` beside the object.

Objects are verified against S3's own SHA256 checksum where the store keeps one; a store that returns
none (some MinIO, OBS and Ceph versions) is a capability noted once, not an error: its objects are
verified by MD5 ETag or by downloading and hashing them (`S3Store.verify`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sknet.checksums import S3ObjectCheck, file_hash
from sknet.errors import SknetError
from sknet.locks import exclusive_lock

MANIFEST = "manifest.json"
CHUNK = 8 * 2**20  # multipart part size, and the read block for hashing
MULTIPART_THRESHOLD = 64 * 2**20  # CIFAR-10 files (30.7 MB) go up in one part, with a full sha256 checksum
S3_MAX_ATTEMPTS = 9  # tries per S3 request, the first included (botocore's retries={"max_attempts": 8})
S3_TIMEOUT_SECONDS = 60.0  # each try's wait for an answer: a hung endpoint fails, naming itself
S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
CLAIM = ".writing"  # `<prefix>/.writing`: who is publishing the prefix right now (see `claim`)
CLAIM_LEASE = timedelta(minutes=15)  # a claim not renewed for this long is abandoned; renewed after each file
LOCK_PREFIX = ".lock-"  # LocalStore: `.lock-<name>` beside an object written by put_bytes_if
PARTIAL_PREFIX = ".partial-"  # LocalStore: a write in progress, renamed into place when complete

REDACTED = "REDACTED"
SECRET_PARAMS = ("signature", "credential", "token", "secret", "password", "accesskeyid", "apikey", "api_key")
SECRET_PARAM_NAMES = {"sig", "key", "policy", "key-pair-id"}  # Azure SAS, API keys, CloudFront signed URLs

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


def is_object_store_uri(uri: str) -> bool:
    """True when `uri` has a scheme (`s3://…`, `file://…`): a store's URI, not a plain local path."""
    return "://" in uri


def is_s3_uri(uri: str) -> bool:
    """True for `s3://bucket[/prefix]`."""
    return uri.startswith(S3_SCHEME)


def is_file_uri(uri: str) -> bool:
    """True for `file:///path`."""
    return uri.startswith(FILE_SCHEME)


def file_uri_path(uri: str) -> str:
    """The path of a `file://` URI."""
    return uri[len(FILE_SCHEME):]


def redact_url(url: str) -> str:
    """`url` fit for a log line or an error: the values of query parameters that carry a signature, a
    credential or a token (presigned S3/OBS/OSS/GCS URLs: X-Amz-Signature, X-Amz-Credential,
    X-Amz-Security-Token, Signature, AWSAccessKeyId; Azure SAS `sig`; CloudFront; `token`, `key`…) and a
    password in the URL are replaced by REDACTED; everything else is left as written."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}" if at and ":" in userinfo else parts.netloc
    query = "&".join(_redact_field(field) for field in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_field(field: str) -> str:
    """One `name=value` of a query string, its value REDACTED when the name says it is a secret."""
    name = field.partition("=")[0]
    plain = urllib.parse.unquote_plus(name).lower()
    secret = plain in SECRET_PARAM_NAMES or any(word in plain for word in SECRET_PARAMS)
    return f"{name}={REDACTED}" if secret else field


def sha256_file(path: Path) -> str:
    return file_hash(path, "sha256")


def join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key.lstrip('/')}" if prefix else key.lstrip("/")


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


class S3Store:
    """An S3 bucket/prefix through boto3: AWS, MinIO, Huawei OBS (`endpoint_url`), standard credentials."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None, region: str | None = None,
                 addressing_style: str = "auto", max_attempts: int = S3_MAX_ATTEMPTS,
                 timeout_seconds: float = S3_TIMEOUT_SECONDS, client=None):
        bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
        if not bucket:
            raise PermanentStorageError(f"{uri!r}: expected s3://bucket[/prefix]")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = client or s3_client(endpoint_url=endpoint_url, region=region, addressing_style=addressing_style,
                                          max_attempts=max_attempts, timeout_seconds=timeout_seconds)

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def _fail(self, op: str, key: str, exc: Exception) -> StorageError:
        """An error naming the operation, the object, the endpoint and what went wrong (never credentials)."""
        what = _error_code(exc) or type(exc).__name__
        meta = getattr(self.client, "meta", None)
        if "Timeout" in type(exc).__name__ and meta is not None:
            what += f" (no answer within {meta.config.read_timeout:g} s: storage.timeout_seconds)"
        where = f" at {meta.endpoint_url}" if meta is not None else ""
        return StorageError(f"{op} s3://{self.bucket}/{self._key(key)}{where}: {what}")

    def get(self, key: str, dest: Path) -> None:
        try:
            write_atomic(Path(dest), lambda partial: self.client.download_file(
                self.bucket, self._key(key), str(partial), Config=transfer_config()))
        except Exception as exc:
            raise self._fail("get", key, exc) from None

    def put(self, src: Path, key: str) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key), Config=transfer_config(),
                                    ExtraArgs={"ChecksumAlgorithm": "SHA256"})
        except Exception as exc:
            raise self._fail("put", key, exc) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise self._fail("get", key, exc) from None

    def put_bytes(self, data: bytes, key: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256")
        except Exception as exc:
            raise self._fail("put", key, exc) from None

    def get_versioned(self, key: str) -> Versioned | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return Versioned(response["Body"].read(), response["ETag"])
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("get", key, exc) from None

    def put_bytes_if(self, data: bytes, key: str, tag: str | None) -> str:
        """Write `data` only if the object still has ETag `tag` (None: only if there is none).

        412 PreconditionFailed, 409 ConditionalRequestConflict (a concurrent conditional write) and
        404 (deleted meanwhile) are a lost race: `WriteConflict`. A store that answers 501 to
        conditional writes is written unconditionally, with a warning (once) that races go unnoticed.
        """
        condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                          ChecksumAlgorithm="SHA256", **condition)["ETag"]
        except Exception as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                raise WriteConflict(f"put s3://{self.bucket}/{self._key(key)}: changed by another writer "
                                    "since it was read") from None
            if code not in ("NotImplemented", "501"):
                raise self._fail("put", key, exc) from None
        _note_once(("conditional writes", self.client.meta.endpoint_url, self.bucket),
                   f"s3://{self.bucket} ({self.client.meta.endpoint_url}) does not support conditional writes "
                   "(If-Match, If-None-Match): concurrent releases are not detected")
        self.put_bytes(data, key)
        return self._head(key)["ETag"]

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                found += [ObjectInfo(o["Key"][strip:], o["Size"]) for o in page.get("Contents", [])]
        except Exception as exc:
            raise self._fail("list", prefix, exc) from None
        return sorted(found, key=lambda o: o.key)

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("head", key, exc) from None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from None

    def verify(self, key: str, size: int, sha256: str, local: Path | None = None) -> None:
        """Size from HEAD, content from S3's own SHA256 checksum where the store keeps one (`S3ObjectCheck`).

        A store that returns no checksum (some MinIO, OBS and Ceph versions) is noted once; its objects are
        checked by their MD5 ETag against `local` or by downloading and hashing them. A missing checksum is
        never an error, so never a reason to retry.
        """
        head = self._head(key)
        if head is None:
            raise StorageError(f"verify s3://{self.bucket}/{self._key(key)}: no such object")
        _check_size(f"s3://{self.bucket}", self._key(key), head["ContentLength"], size)
        check = S3ObjectCheck(self.client, self.bucket, self._key(key), head, upload_part_size=CHUNK,
                              unreadable=lambda exc: self._fail("verify", key, exc))
        if not check.checksummed:
            self._note_no_checksums()
        if not check.matches(sha256, local):
            raise _content_differs(f"s3://{self.bucket}", self._key(key))

    def _note_no_checksums(self) -> None:
        _note_once(("checksums", self.client.meta.endpoint_url, self.bucket),
                   f"s3://{self.bucket} ({self.client.meta.endpoint_url}) returns no SHA256 checksums "
                   "(x-amz-checksum-sha256): objects are verified by their MD5 ETag or by downloading and hashing them")

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort the multipart uploads under `prefix` that were started and never completed (a process
        killed mid-upload leaves them, invisible but billed); returns how many."""
        full = self._key(prefix).rstrip("/") + "/" if prefix or self.prefix else ""
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
        except Exception as exc:
            raise self._fail("abort incomplete uploads under", prefix, exc) from None
        return aborted


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


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=CHUNK,
                          max_concurrency=8, use_threads=True)


def s3_client(*, endpoint_url: str | None = None, region: str | None = None, addressing_style: str = "auto",
              max_attempts: int = S3_MAX_ATTEMPTS, timeout_seconds: float = S3_TIMEOUT_SECONDS):
    """A boto3 S3 client with the standard credential chain and botocore's adaptive retries.

    `max_attempts` counts every try of a request, the first included (botocore's `total_max_attempts`);
    `timeout_seconds` bounds each try's wait for a connection (at most 10 s) and for an answer.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        s3={"addressing_style": addressing_style},
        connect_timeout=min(10.0, timeout_seconds), read_timeout=timeout_seconds, max_pool_connections=16,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def open_store(uri: str, *, endpoint_url: str | None = None, region: str | None = None,
               addressing_style: str = "auto", max_attempts: int = S3_MAX_ATTEMPTS,
               timeout_seconds: float = S3_TIMEOUT_SECONDS) -> Store:
    """`s3://bucket/prefix` → S3Store, `file:///path` (or a plain path) → LocalStore."""
    if is_s3_uri(uri):
        return S3Store(uri, endpoint_url=endpoint_url, region=region, addressing_style=addressing_style,
                       max_attempts=max_attempts, timeout_seconds=timeout_seconds)
    if is_file_uri(uri):
        return LocalStore(file_uri_path(uri))
    if is_object_store_uri(uri):
        raise PermanentStorageError(f"unsupported storage URI {uri!r}: expected s3://bucket/prefix or file:///path")
    return LocalStore(uri)


def publish(store: Store, prefix: str, files: Mapping[str, Path], metadata: Mapping | None = None,
            progress: Callable[[str], None] | None = None, file_facts: Mapping[str, dict] | None = None,
            *, exclusive: bool = False, holder: str | None = None) -> dict:
    """Upload `files` (key under prefix → local path), verify each object, then write the manifest.

    Each manifest entry holds size and sha256, plus any `file_facts[name]` (e.g. a record count); a
    sha256 already in the facts is not computed again, and the verification below checks it anyway.

    With `exclusive`, the prefix is claimed first (`claim`, recording `holder`: the flow run publishing it)
    and the manifest only created if there is none, so two executions publishing one prefix never mix their
    objects and manifests: the one that comes second gets `WriteConflict` and has written nothing over the
    other's objects. A prefix already published is refused the same way, and a claim left beside its
    manifest is removed (`clear_published_claim`).

    Once the manifest is written, multipart uploads that earlier, cut-off attempts left open under the
    prefix are aborted, and the claim is removed (both best effort: a failure is a warning, the
    publication is complete).
    """
    if exclusive and clear_published_claim(store, prefix):
        raise WriteConflict(f"{store.uri}/{prefix}: already published by another execution")
    hold = claim(store, prefix, holder) if exclusive else None
    try:
        if hold and store.exists(join(prefix, MANIFEST)):
            raise WriteConflict(f"{store.uri}/{prefix}: already published by another execution")
        entries = _upload(store, prefix, files, file_facts or {}, progress, hold)
        for name, entry in entries.items():
            try:
                store.verify(join(prefix, name), entry["size"], entry["sha256"], local=Path(files[name]))
            except StorageError as exc:
                _refuse_changed_source(Path(files[name]), name, entry, exc)
                raise
        manifest = {"files": entries, **(metadata or {})}
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if hold:
            renew(hold)
            store.put_bytes_if(body, join(prefix, MANIFEST), None)
        else:
            store.put_bytes(body, join(prefix, MANIFEST))
        _abort_incomplete_uploads(store, prefix)
        return manifest
    finally:
        if hold:
            drop(hold)


def _refuse_changed_source(path: Path, name: str, entry: Mapping, failure: StorageError) -> None:
    """After an object failed its check: `PermanentStorageError` when the local file itself is no longer what was
    hashed (changed since it was exported and scored: a retry would upload it again, as wrong); else return, and
    the failure stands as the transient one it may be (the bytes changed in transit or at rest)."""
    if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
        raise PermanentStorageError(
            f"{path} changed after it was hashed (its release entry {name} records {entry['size']:,} bytes, sha256 "
            f"{entry['sha256'][:12]}…): what was exported and scored is not what would be released; not retried "
            f"({failure})") from None


def _abort_incomplete_uploads(store: Store, prefix: str) -> None:
    """After a publication: leftovers of earlier, cut-off uploads under `prefix` go (best effort)."""
    try:
        if aborted := store.abort_incomplete_uploads(prefix):
            log.info("aborted %d incomplete multipart upload(s) under %s/%s", aborted, store.uri, prefix)
    except StorageError as exc:
        log.warning("%s; incomplete multipart uploads under %s/%s may remain", exc, store.uri, prefix)


def _upload(store: Store, prefix: str, files: Mapping[str, Path], file_facts: Mapping[str, dict],
            progress: Callable[[str], None] | None, hold: Claim | None) -> dict:
    """Put every file (renewing the claim after each) and return the manifest's file table."""
    entries = {}
    for name, path in sorted(files.items()):
        path = Path(path)
        facts = file_facts.get(name, {})
        entries[name] = {**facts, "size": path.stat().st_size, "sha256": facts.get("sha256") or sha256_file(path)}
        store.put(path, join(prefix, name))
        if hold:
            renew(hold)
        if progress:
            progress(f"uploaded {name} ({entries[name]['size']:,} bytes)")
    return entries


@dataclass
class Claim:
    """This writer's hold on `<prefix>/.writing`: its record (owner, host, pid, times) and version tag."""

    store: Store
    key: str
    record: dict
    tag: str


def claim(store: Store, prefix: str, holder: str | None = None) -> Claim:
    """Take `<prefix>/.writing` for this writer, so that no other execution publishes the same prefix.

    The claim records `holder` (the flow run publishing, if any), host, pid and the prefix (the version).
    A claim of another writer renewed within CLAIM_LEASE is refused with `WriteConflict` naming its holder.
    Taken over are: a claim of the same `holder` at once (an earlier attempt of this very flow run, killed
    before it removed its claim: its retry must not wait for the lease), and any claim not renewed for
    CLAIM_LEASE (abandoned). Writers' clocks are compared, so hosts need synchronised clocks (NTP) to
    within a fraction of the lease.
    """
    key = join(prefix, CLAIM)
    now = _utc_now()
    record = {"owner": uuid.uuid4().hex, "holder": holder, "prefix": prefix, "host": socket.gethostname(),
              "pid": os.getpid(), "started_at": now, "renewed_at": now}
    held = store.get_versioned(key)
    previous = _claim_record(held)
    ours = holder is not None and previous.get("holder") == holder
    if held is not None and not ours and not _abandoned(previous):
        raise WriteConflict(f"{store.uri}/{prefix} is being written by another execution ({_describe(previous)}); "
                            f"wait for it, or delete {store.uri}/{key} if that process is gone "
                            f"(a claim not renewed for {CLAIM_LEASE} is taken over)")
    if held is not None:
        log.info("taking over the claim %s/%s of %s (%s)", store.uri, key,
                 "an earlier attempt of this flow run" if ours else "an abandoned writer", _describe(previous))
    body = json.dumps(record, sort_keys=True).encode()
    try:
        tag = store.put_bytes_if(body, key, held.tag if held else None)
    except WriteConflict:
        again = store.get_versioned(key)  # a retried request may have landed: then the claim is ours
        if again is None or _claim_record(again).get("owner") != record["owner"]:
            raise WriteConflict(f"{store.uri}/{prefix}: another execution claimed it at the same moment") from None
        tag = again.tag
    return Claim(store, key, record, tag)


def renew(hold: Claim) -> None:
    """Show that the claim's writer is alive; `WriteConflict` if another execution took the claim over."""
    hold.record["renewed_at"] = _utc_now()
    try:
        hold.tag = hold.store.put_bytes_if(json.dumps(hold.record, sort_keys=True).encode(), hold.key, hold.tag)
    except WriteConflict:
        raise WriteConflict(f"{hold.store.uri}/{hold.key}: this execution's claim was taken over (not renewed "
                            f"within {CLAIM_LEASE}); stopping before the manifest") from None


def drop(hold: Claim) -> None:
    """Remove the claim if it is still this writer's; failing to is a warning, never the publication's failure.

    A claim left behind blocks nobody for long: before the manifest, a retry of the same holder takes it over
    at once (anyone else after CLAIM_LEASE); beside the manifest, the next publication or promotion of the
    prefix removes it (`clear_published_claim`).
    """
    try:
        held = hold.store.get_versioned(hold.key)
        if held is not None and held.tag == hold.tag:
            hold.store.delete(hold.key)
    except StorageError as exc:
        log.warning("could not remove the claim %s/%s (%s); it is left behind, for a retry of the same flow run "
                    "to take over or, once the manifest exists, the next publication or promotion to remove",
                    hold.store.uri, hold.key, exc)


def clear_published_claim(store: Store, prefix: str) -> bool:
    """True if `prefix` is published (has its manifest). A claim still beside the manifest was left by a writer
    stopped between the two; no writer needs it any more, so it is removed (failing to: a warning)."""
    if not store.exists(join(prefix, MANIFEST)):
        return False
    key = join(prefix, CLAIM)
    try:
        if (held := store.get_versioned(key)) is not None:
            store.delete(key)
            log.info("removed the claim %s/%s of %s, left beside the manifest: the publication is complete",
                     store.uri, key, _describe(_claim_record(held)))
    except StorageError as exc:
        log.warning("could not remove the claim %s/%s left beside the manifest (%s); the publication is complete",
                    store.uri, key, exc)
    return True


def _claim_record(held: Versioned | None) -> dict:
    try:
        record = json.loads(held.data) if held else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _abandoned(record: Mapping) -> bool:
    """A claim not renewed within the lease (or unreadable) belongs to no live writer."""
    try:
        return datetime.now(UTC) - datetime.fromisoformat(record["renewed_at"]) > CLAIM_LEASE
    except (KeyError, TypeError, ValueError):
        return True


def _describe(record: Mapping) -> str:
    run = f"flow run {record['holder']}, " if record.get("holder") else ""
    return (f"{run}host {record.get('host', '?')} pid {record.get('pid', '?')}, "
            f"started {record.get('started_at', '?')}, renewed {record.get('renewed_at', '?')}")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def read_manifest(store: Store, prefix: str) -> dict:
    key = join(prefix, MANIFEST)
    if (held := store.get_versioned(key)) is None:  # one request, not a HEAD and then a GET
        raise IncompleteError(f"{store.uri}/{prefix}: no {MANIFEST}; the prefix is incomplete or not published")
    try:
        return json.loads(held.data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PermanentStorageError(f"{store.uri}/{key}: not valid JSON ({exc})") from None


def store_from_config(storage, uri: str | None = None) -> Store:
    """The store at `uri` (default `storage.uri`) with the endpoint, region, addressing and attempts of a
    StorageConfig."""
    return open_store(uri or storage.uri, endpoint_url=storage.endpoint_url, region=storage.region,
                      addressing_style=storage.addressing_style, max_attempts=storage.max_attempts,
                      timeout_seconds=storage.timeout_seconds)
