"""`S3Store`: an S3 bucket/prefix through boto3 (AWS, MinIO, Huawei OBS), with its client settings."""

from __future__ import annotations

from pathlib import Path

from sknet.storage.base import (
    CHUNK,
    MULTIPART_THRESHOLD,
    ObjectInfo,
    PermanentStorageError,
    StorageError,
    Versioned,
    WriteConflict,
    _check_size,
    _content_differs,
    _error_code,
    _note_once,
    join,
    write_atomic,
)
from sknet.storage.checksums import S3ObjectCheck
from sknet.storage.uris import S3_SCHEME

S3_MAX_ATTEMPTS = 9  # tries per S3 request, the first included (botocore's retries={"max_attempts": 8})
S3_TIMEOUT_SECONDS = 60.0  # each try's wait for an answer: a hung endpoint fails, naming itself


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
