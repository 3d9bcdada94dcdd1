"""Transient S3 faults (500, 503, SlowDown) from a proxy in front of the real server are retried."""

import pytest

from faultproxy import FaultProxy
from sknet.data.stage import dataset_manifest, fetch, stage
from sknet.storage import S3Store, StorageError, s3_client


@pytest.fixture
def proxy_for(s3_server):
    proxies = []

    def make(faults):
        proxies.append(FaultProxy(s3_server.port, faults))
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
    with pytest.raises(StorageError, match=rf"get s3://{bucket}/p/x\.bin: "):
        store.get("x.bin", tmp_path / "x.bin")
    assert proxy.injected >= 2 and not (tmp_path / "x.bin").exists()  # each try was a fault
