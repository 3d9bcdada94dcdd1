"""Which datasets a run may train on: those under one of `data.allowed_prefixes` (default `<storage.uri>/datasets/`).

"Under" is a path relation, not a string one: `s3://b/datasets/` admits `s3://b/datasets/cifar10/<digest>`, never
`s3://b/datasets-evil/…`. An S3 URI is compared segment by segment, and refused when a segment is empty, `.` or
`..` (S3 keeps them literally, a proxy or another client may not); a local path or `file://` URI is compared after
resolving `..` and symlinks, as the file system will when the dataset is read. A `%` is refused everywhere: nothing
in sknet decodes it, so an encoded URI would not name the place it seems to.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from sknet.errors import ConfigError
from sknet.storage import S3_SCHEME, file_uri_path, is_file_uri, is_object_store_uri, is_s3_uri, redact_url

DATASETS_DIR = "datasets"  # where a store keeps its datasets: the default prefix is <storage.uri>/datasets/


class DatasetNotAllowed(ConfigError):
    """A run's dataset is not under `data.allowed_prefixes`: refused before any compute, never retried."""


class Location(NamedTuple):
    root: str  # "s3://<bucket>", or "file://" for the local file system
    parts: tuple[str, ...]  # path segments below the root


def location(uri: str) -> Location:
    """Where `uri` (s3://, file:// or a local path) points; `ValueError` saying why when it names no clear place."""
    if "%" in uri:
        raise ValueError("'%' is not accepted: nothing decodes percent-encoding, write the characters themselves")
    if is_s3_uri(uri):
        bucket, _, key = uri[len(S3_SCHEME):].partition("/")
        parts = tuple(key.rstrip("/").split("/")) if key.rstrip("/") else ()
        if not bucket or any(part in ("", ".", "..") for part in parts):
            raise ValueError("expected s3://bucket/key without empty, '.' or '..' segments")
        return Location(S3_SCHEME + bucket, parts)
    if is_object_store_uri(uri) and not is_file_uri(uri):
        raise ValueError("expected an s3:// or file:// URI or a local path")
    path = file_uri_path(uri) if is_file_uri(uri) else uri
    if not path:
        raise ValueError("expected a path")
    return Location("file://", Path(os.path.realpath(path)).parts)


def is_under(uri: str, prefix: str) -> bool:
    """Whether `uri` is the place `prefix` names or lies below it (both must be valid `location`s)."""
    place, allowed = location(uri), location(prefix)
    return place.root == allowed.root and place.parts[:len(allowed.parts)] == allowed.parts


def default_prefixes(storage_uri: str) -> tuple[str, ...]:
    """The prefixes of a config that sets none: its own store's datasets, `<storage.uri>/datasets/`."""
    return (f"{storage_uri.rstrip('/')}/{DATASETS_DIR}/",)


def refuse_unless_allowed(uri: str, prefixes: Sequence[str]) -> None:
    """Raise `DatasetNotAllowed`, naming `uri` and `prefixes`, unless `uri` lies under one of them."""
    allowed = list(prefixes)
    for prefix in allowed:  # the config checks the ones it is given; the default comes from storage.uri
        try:
            location(prefix)
        except ValueError as error:
            raise DatasetNotAllowed(f"data.allowed_prefixes: {prefix!r}: {error} (unset, the list is "
                                    f"<storage.uri>/{DATASETS_DIR}/)") from None
    try:
        if uri and any(is_under(uri, prefix) for prefix in allowed):
            return
        why = "" if uri else " (data.uri is not set)"
    except ValueError as error:
        why = f" ({error})"
    raise DatasetNotAllowed(
        f"dataset {redact_url(uri)!r} refused{why}: a run trains only on a dataset under one of "
        f"data.allowed_prefixes {allowed}. Stage it under one of them (sknet data stage --dest <prefix>cifar10) or "
        f"add its prefix to data.allowed_prefixes (unset, the list is [<storage.uri>/{DATASETS_DIR}/])")
