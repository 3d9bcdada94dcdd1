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

The package: `base` (errors, the `Store` interface, manifests, whole writes), `uris` (schemes, redaction),
`local` (`LocalStore`), `s3` (`S3Store`, the boto3 client), `checksums` (S3's SHA256 checksums and ETags),
`publish`, `claims` (who is writing a prefix), `locks` (advisory file locks). Everything a caller needs is
imported from here: `from sknet.storage import open_store, publish, …`.
"""

from __future__ import annotations

from sknet.storage.base import (
    CHUNK,
    MANIFEST,
    MULTIPART_THRESHOLD,
    IncompleteError,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    Store,
    Versioned,
    WriteConflict,
    join,
    read_manifest,
    sha256_file,
    write_atomic,
)
from sknet.storage.checksums import file_hash
from sknet.storage.claims import CLAIM, CLAIM_LEASE, Claim, claim, clear_published_claim, drop, renew
from sknet.storage.local import LocalStore
from sknet.storage.publish import publish
from sknet.storage.s3 import S3_MAX_ATTEMPTS, S3_TIMEOUT_SECONDS, S3Store, s3_client, transfer_config
from sknet.storage.uris import (
    FILE_SCHEME,
    REDACTED,
    S3_SCHEME,
    file_uri_path,
    is_file_uri,
    is_object_store_uri,
    is_s3_uri,
    redact_url,
)

__all__ = [
    "CHUNK", "CLAIM", "CLAIM_LEASE", "FILE_SCHEME", "MANIFEST", "MULTIPART_THRESHOLD", "REDACTED", "S3_MAX_ATTEMPTS",
    "S3_SCHEME", "S3_TIMEOUT_SECONDS", "Claim", "IncompleteError", "LocalStore", "ObjectInfo", "PermanentStorageError",
    "S3Store", "Store", "StorageError", "Versioned", "WriteConflict", "claim", "clear_published_claim", "drop",
    "file_hash", "file_uri_path", "is_file_uri", "is_object_store_uri", "is_s3_uri", "join", "open_store", "publish",
    "read_manifest", "redact_url", "renew", "s3_client", "sha256_file", "store_from_config", "transfer_config",
    "write_atomic",
]


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


def store_from_config(storage, uri: str | None = None) -> Store:
    """The store at `uri` (default `storage.uri`) with the endpoint, region, addressing and attempts of a
    StorageConfig."""
    return open_store(uri or storage.uri, endpoint_url=storage.endpoint_url, region=storage.region,
                      addressing_style=storage.addressing_style, max_attempts=storage.max_attempts,
                      timeout_seconds=storage.timeout_seconds)
