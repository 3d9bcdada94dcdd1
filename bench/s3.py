"""A scratch directory and a moto S3 server with a `bench` bucket, for the benchmarks that talk HTTP to S3."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.s3server import S3Server
from sknet.storage import s3_client

BUCKET = "bench"


@contextmanager
def scratch_s3(name: str) -> Iterator[tuple[Path, S3Server]]:
    """(scratch directory, running server with an empty `bench` bucket); both gone afterwards."""
    logging.getLogger("sknet").setLevel(logging.WARNING)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    with tempfile.TemporaryDirectory(prefix=f"sknet-bench-{name}-") as scratch:
        scratch = Path(scratch)
        server = S3Server(scratch / "moto.log")
        try:
            s3_client(endpoint_url=server.endpoint).create_bucket(Bucket=BUCKET)
            yield scratch, server
        finally:
            server.stop()
