"""Fetch + verify of a full-size synthetic dataset from a local S3 server (moto) vs plain boto3.

Same run, same server, same objects: `sknet.data.stage.fetch` (parallel download, sha256 + record
check of every file, verified cache) against a sequential `download_file` loop with no checks, plus
verify throughput on its own and the warm-cache fetch time.
"""

from __future__ import annotations

import shutil
import time

from bench.s3 import scratch_s3
from sknet.data.cache import check_fetched_file, fetch
from sknet.data.layout import LAYOUT_DIR
from sknet.data.manifest import split_dataset_uri
from sknet.data.stage import stage
from sknet.data.synth import write_synthetic_layout
from sknet.storage import S3Store, join, read_manifest, s3_client, transfer_config


def bench_storage() -> dict:
    with scratch_s3("storage") as (scratch, server):
        try:
            client = s3_client(endpoint_url=server.endpoint)
            store = S3Store("s3://bench/datasets", endpoint_url=server.endpoint)
            write_synthetic_layout(scratch / "data")
            uri = stage(str(scratch / "data"), store)
            _, digest = split_dataset_uri(uri)
            manifest = read_manifest(store, digest)
            total = sum(e["size"] for e in manifest["files"].values())

            plain_dir = scratch / "plain"
            plain_dir.mkdir()
            started = time.perf_counter()
            for name in sorted(manifest["files"]):
                client.download_file("bench", f"datasets/{join(digest, name)}", str(plain_dir / name),
                                     Config=transfer_config())
            plain = time.perf_counter() - started

            started = time.perf_counter()
            path, _ = fetch(uri, store, scratch / "cache")
            cold = time.perf_counter() - started

            started = time.perf_counter()
            for name, entry in manifest["files"].items():
                check_fetched_file(path / name, name, entry, name)
            verify = time.perf_counter() - started

            started = time.perf_counter()
            fetch(uri, store, scratch / "cache")
            warm = time.perf_counter() - started
        finally:
            shutil.rmtree(scratch / "cache", ignore_errors=True)
    return {
        "benchmark": "storage", "server": "moto_server on 127.0.0.1", "bytes": total,
        "files": len(manifest["files"]),
        "plain_sequential_download_seconds": round(plain, 2),
        "fetch_and_verify_seconds": round(cold, 2),
        "fetch_over_plain_ratio": round(cold / plain, 3), "goal_ratio": "≤ 1.0",
        "verify_mb_per_sec": round(total / 2**20 / verify, 1),
        "warm_cache_fetch_seconds": round(warm, 4), "goal_warm": "≤ 1 s",
        "layout": LAYOUT_DIR,
    }
