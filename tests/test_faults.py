"""Transient S3 faults (500, 503, SlowDown) from a proxy in front of the real server are retried; a store
that returns no checksums (the proxy strips them) is verified by content, never retried for it."""

import hashlib
import logging
import os

import pytest

from infra.faultproxy import FaultProxy
from multipart import upload_in_parts
from sknet.data.cache import fetch, verify_remote
from sknet.data.manifest import dataset_manifest
from sknet.data.stage import stage
from sknet.storage import S3Store, StorageError, publish, s3_client


@pytest.fixture
def proxy_for(s3_server):
    proxies = []

    def make(faults=0, **options):
        proxies.append(FaultProxy(s3_server.port, faults, **options))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def test_stage_and_fetch_complete_through_transient_faults(proxy_for, bucket, synthetic_data, tmp_path):
    proxy = proxy_for(faults=6)
    store = S3Store(f"s3://{bucket}/datasets", endpoint_url=proxy.endpoint)
    uri = stage(str(synthetic_data), store)
    proxy.remaining = 6  # and again while downloading
    path, digest = fetch(uri, store, tmp_path / "cache")
    assert proxy.injected == 12 and proxy.forwarded > 0
    assert dataset_manifest(path)["digest"] == digest


def test_persistent_faults_fail_with_the_object_named(proxy_for, bucket, tmp_path):
    proxy = proxy_for(faults=1000)
    client = s3_client(endpoint_url=proxy.endpoint, max_attempts=2)
    store = S3Store(f"s3://{bucket}/p", client=client)
    with pytest.raises(StorageError, match=rf"get s3://{bucket}/p/x\.bin at {proxy.endpoint}: "):
        store.get("x.bin", tmp_path / "x.bin")
    assert proxy.injected >= 2 and not (tmp_path / "x.bin").exists()  # each try was a fault


NO_CHECKSUMS = "returns no SHA256 checksums"


def test_a_store_without_checksums_stages_and_verifies_by_content_noted_once(proxy_for, bucket, synthetic_data,
                                                                             caplog):
    caplog.set_level(logging.INFO, logger="sknet")
    proxy = proxy_for(strip_checksums=True)
    store = S3Store(f"s3://{bucket}/datasets", endpoint_url=proxy.endpoint)
    uri = stage(str(synthetic_data), store)  # single-part objects: by their MD5 ETag against the local file
    assert verify_remote(uri, store)["files"] == 8  # without local files: downloaded and hashed
    assert proxy.stripped > 0
    assert caplog.text.count(NO_CHECKSUMS) == 1


def test_a_changed_object_is_caught_on_a_store_without_checksums(proxy_for, bucket, tmp_path):
    proxy = proxy_for(strip_checksums=True)
    store = S3Store(f"s3://{bucket}", endpoint_url=proxy.endpoint)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    entry = publish(store, "rel", {"model.bin": model})["files"]["model.bin"]
    store.put_bytes(b"WEIGHTS" * 1000, "rel/model.bin")  # same size, other content
    for local in (model, None):
        with pytest.raises(StorageError, match=r"rel/model\.bin: content differs from the manifest"):
            store.verify("rel/model.bin", entry["size"], entry["sha256"], local=local)


def test_a_multipart_object_on_a_store_without_checksums_is_hashed(proxy_for, bucket, tmp_path):
    proxy = proxy_for(strip_checksums=True)
    store = S3Store(f"s3://{bucket}", endpoint_url=proxy.endpoint)
    data = os.urandom(6 * 2**20)
    (tmp_path / "ckpt.bin").write_bytes(data)
    upload_in_parts(store.client, bucket, "ckpt.bin", data, 5 * 2**20)
    store.verify("ckpt.bin", len(data), hashlib.sha256(data).hexdigest(), local=tmp_path / "ckpt.bin")
    with pytest.raises(StorageError, match=r"ckpt\.bin: content differs"):
        store.verify("ckpt.bin", len(data), hashlib.sha256(b"other").hexdigest())
