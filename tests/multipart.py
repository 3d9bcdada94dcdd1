"""Multipart objects made by hand, in any part size, as other tools (aws cli, mc, rclone) upload them."""

from __future__ import annotations


def upload_in_parts(client, bucket: str, key: str, data: bytes, part_size: int, *, complete: bool = True) -> str:
    """Upload `data` to s3://bucket/key in `part_size` parts with SHA256 checksums; returns the upload id.

    Without `complete`, only the first part goes up and the upload is left open, as a process killed
    mid-upload leaves it.
    """
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part_size), 1):
        response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                      Body=data[start:start + part_size], ChecksumAlgorithm="SHA256")
        parts.append({"ETag": response["ETag"], "PartNumber": number,
                      **({"ChecksumSHA256": response["ChecksumSHA256"]} if "ChecksumSHA256" in response else {})})
        if not complete:
            return upload
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    return upload
