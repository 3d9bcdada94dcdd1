"""Whether an S3 object holds the bytes whose sha256 a manifest records, told by the checksum the store keeps.

S3 keeps a SHA256 checksum of an object uploaded with one (a HEAD with ChecksumMode=ENABLED returns it as
`ChecksumSHA256`): of the object's bytes when it went up in one part; of its parts' sha256 digests when it went
up in several (`<base64>-<parts>`), which depends on the part size it was uploaded with. Some MinIO, OBS and Ceph
versions keep none: then a single-part object's MD5 ETag is compared with a local copy, and any other object is
downloaded and hashed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, algorithm).hexdigest()


def multipart_parts(head: Mapping) -> int | None:
    """Part count of a multipart object (ETag `"…-N"`, as S3, MinIO and OBS report it), else None."""
    match = re.search(r"-(\d+)\"?$", head.get("ETag", ""))
    return int(match.group(1)) if match else None


def composite_sha256(path: Path, part_size: int) -> str:
    """S3's checksum of a multipart upload in `part_size` parts: base64 sha256 over the parts' sha256 digests."""
    digests = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(part_size):
            digests.update(hashlib.sha256(block).digest())
    return base64.b64encode(digests.digest()).decode()


@dataclass(frozen=True)
class S3ObjectCheck:
    """One object of `bucket` (`key`: the bucket's own key, `head`: its HEAD with checksums) checked against a
    sha256. `upload_part_size` is the part size boto3 uploads with (and the download's block size);
    `unreadable` turns a failed download into the error to raise."""

    client: Any
    bucket: str
    key: str
    head: Mapping
    upload_part_size: int
    unreadable: Callable[[Exception], Exception]

    @property
    def checksummed(self) -> bool:
        """Whether the store returned the object's SHA256 checksum."""
        return self.head.get("ChecksumSHA256") is not None

    def matches(self, sha256: str, local: Path | None) -> bool:
        """By the stored checksum (a multipart one recomputed from `local` in the object's own part size);
        without one, a single-part object by its MD5 ETag against `local`; else by downloading and hashing it."""
        stored, parts = self.head.get("ChecksumSHA256"), multipart_parts(self.head)
        if stored is None:
            if parts is None and local is not None and self.head.get("ETag", "").strip('"') == file_hash(local, "md5"):
                return True  # an ETag that is not an MD5 (SSE-KMS, SSE-C) never matches: then download
        elif parts is None:
            return stored.split("-")[0] == base64.b64encode(bytes.fromhex(sha256)).decode()
        elif local is not None and (part_size := self._part_size(parts)):
            return stored.split("-")[0] == composite_sha256(Path(local), part_size)
        return self._download_sha256() == sha256

    def _part_size(self, parts: int) -> int | None:
        """The part size the object was uploaded with: its first part's (HEAD ?partNumber=1), or boto3's rule
        when the store does not answer that; None when neither gives `parts` parts."""
        size = self.head["ContentLength"]
        try:
            first = self.client.head_object(Bucket=self.bucket, Key=self.key, PartNumber=1)["ContentLength"]
        except Exception:  # noqa: BLE001 - a store without part HEADs: boto3's own choice below
            first = self.upload_part_size
            while -(-size // first) > parts:  # boto3 grows the part size when a file needs > 10,000 parts
                first *= 2
        return first if first > 0 and -(-size // first) == parts else None

    def _download_sha256(self) -> str:
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"]
            for block in body.iter_chunks(self.upload_part_size):
                digest.update(block)
        except Exception as exc:
            raise self.unreadable(exc) from None
        return digest.hexdigest()
