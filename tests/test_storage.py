"""Both stores, through the same interface; S3 over real HTTP to moto's server."""

import logging
import os

import pytest

from sknet.storage import (
    IncompleteError,
    LocalStore,
    S3Store,
    StorageError,
    open_store,
    publish,
    read_manifest,
    sha256_file,
)

S3_PREFIX = "some/prefix"


@pytest.fixture
def files(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.txt"
    first.write_bytes(bytes(range(256)) * 1000)
    second.write_text("hello\n")
    return {"dir/a.bin": first, "b.txt": second}


def test_put_get_list_exists_delete_round_trip(store, files, tmp_path):
    store.put(files["dir/a.bin"], "dir/a.bin")
    store.put_bytes(b"xyz", "c.txt")
    assert [(o.key, o.size) for o in store.list()] == [("c.txt", 3), ("dir/a.bin", 256_000)]
    assert [o.key for o in store.list("dir/")] == ["dir/a.bin"]
    assert store.exists("c.txt") and not store.exists("nope")
    store.get("dir/a.bin", tmp_path / "out" / "a.bin")
    assert sha256_file(tmp_path / "out" / "a.bin") == sha256_file(files["dir/a.bin"])
    assert store.get_bytes("c.txt") == b"xyz"
    store.delete("c.txt")
    assert not store.exists("c.txt")


def test_missing_object_error_names_the_object(store, tmp_path):
    with pytest.raises(StorageError, match=r"get .*/missing\.bin"):
        store.get("missing.bin", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_publish_writes_a_verified_manifest_last(store, files):
    manifest = publish(store, "release/1", files, metadata={"kind": "test"})
    assert read_manifest(store, "release/1") == manifest
    assert manifest["kind"] == "test"
    assert manifest["files"]["dir/a.bin"]["sha256"] == sha256_file(files["dir/a.bin"])


def test_prefix_without_manifest_reads_as_incomplete(store, files):
    store.put(files["b.txt"], "half/b.txt")  # a publication interrupted before its manifest
    with pytest.raises(IncompleteError, match="no manifest.json; the prefix is incomplete"):
        read_manifest(store, "half")


def test_verify_detects_a_changed_object(store, files):
    publish(store, "p", files)
    entry = read_manifest(store, "p")["files"]["b.txt"]
    store.put_bytes(b"HELLO\n", "p/b.txt")  # same size, other content
    with pytest.raises(StorageError, match=r"b\.txt: content differs from the manifest"):
        store.verify("p/b.txt", entry["size"], entry["sha256"])
    store.put_bytes(b"hi\n", "p/b.txt")
    with pytest.raises(StorageError, match=r"b\.txt: 3 bytes, expected 6"):
        store.verify("p/b.txt", entry["size"], entry["sha256"])


def test_open_store_picks_the_implementation_by_scheme(tmp_path):
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store("s3://bucket/prefix", region="us-east-1"), S3Store)
    with pytest.raises(StorageError, match="unsupported storage URI 'gs://x'"):
        open_store("gs://x")


def test_local_keys_cannot_escape_the_root(tmp_path):
    from sknet.storage import PermanentStorageError

    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    store = LocalStore(root)
    store.put_bytes(b"x", "runs/r1/a.txt")
    (root / "runs" / "link").symlink_to(outside, target_is_directory=True)  # a symlink inside, leading out
    for key in ("../outside/a", "runs/r1/../../../outside/a", str(outside / "a"), "runs/link/a"):
        with pytest.raises(PermanentStorageError, match=rf"key '{key}' resolves to {outside}/a, outside the "
                                                        rf"store's root {root}: keys must stay under the root"):
            store.put_bytes(b"x", key)
    with pytest.raises(PermanentStorageError, match="outside the store's root"):
        store.get_bytes("runs/link/../../../outside/a")
    assert list(outside.iterdir()) == []
    store.put_bytes(b"y", "runs/r1/../r2/b.txt")  # normalised, and still under the root
    assert store.get_bytes("runs/r2/b.txt") == b"y"


def test_local_store_file_system_errors_are_storage_errors_naming_the_object(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    store = LocalStore(tmp_path / "root")
    store.put_bytes(b"x", "rel/v1/.writing")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    monkeypatch.setattr(Path, "unlink", disk_full)
    with pytest.raises(StorageError, match=rf"put {store.uri}/rel/v1/manifest.json: No space left on device"):
        store.put_bytes(b"{}", "rel/v1/manifest.json")
    with pytest.raises(StorageError, match=rf"delete {store.uri}/rel/v1/.writing: No space left on device"):
        store.delete("rel/v1/.writing")


def test_s3_errors_name_bucket_and_key_but_never_the_secret(s3_server, tmp_path, caplog):
    from s3server import SECRET_KEY

    caplog.set_level(logging.DEBUG)
    store = S3Store("s3://no-such-bucket/x", endpoint_url=s3_server.endpoint)
    with pytest.raises(StorageError) as error:
        store.get("k.bin", tmp_path / "k.bin")
    assert "s3://no-such-bucket/x/k.bin" in str(error.value)
    assert SECRET_KEY not in str(error.value)
    assert SECRET_KEY not in caplog.text


def test_store_from_config_uses_the_storage_section(s3_server, bucket):
    from sknet.config import load_config
    from sknet.storage import store_from_config

    cfg = load_config("cpu-smoke", [f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={s3_server.endpoint}",
                                    "storage.addressing_style=path"])
    store = store_from_config(cfg.storage)
    store.put_bytes(b"ok", "probe.txt")
    assert store.uri == f"s3://{bucket}/runs" and store.get_bytes("probe.txt") == b"ok"
    assert store.client.meta.config.s3["addressing_style"] == "path"


def test_multipart_objects_are_verified_by_their_composite_checksum(s3_server, bucket, tmp_path):
    from sknet.storage import MULTIPART_THRESHOLD

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MULTIPART_THRESHOLD + 5 * 2**20))  # goes up in parts
    store = S3Store(f"s3://{bucket}", endpoint_url=s3_server.endpoint)
    manifest = publish(store, "ckpt", {"big.bin": big})
    entry = manifest["files"]["big.bin"]
    head = store.client.head_object(Bucket=bucket, Key="ckpt/big.bin")
    assert head["ETag"].endswith('-9"')  # 69 MiB in 8 MiB parts
    other = tmp_path / "other.bin"
    other.write_bytes(big.read_bytes()[:-1] + b"\0")
    with pytest.raises(StorageError, match=r"big\.bin: content differs from the manifest"):
        store.verify("ckpt/big.bin", entry["size"], entry["sha256"], local=other)


def test_an_error_without_an_s3_response_is_still_named():
    from sknet.storage import S3Store

    class ReadTimeoutError(Exception):
        response = None  # botocore's connection errors carry no S3 error document

    error = S3Store("s3://bucket/prefix", client=object())._fail("get", "data_batch_1.bin", ReadTimeoutError())
    assert str(error) == "get s3://bucket/prefix/data_batch_1.bin: ReadTimeoutError"


def test_a_conditional_write_loses_to_any_change_since_the_read(store):
    from sknet.storage import WriteConflict

    first = store.put_bytes_if(b"one", "ptr", None)  # None: only if there is no object yet
    with pytest.raises(WriteConflict, match=r"put .*/ptr: changed by another writer since it was read"):
        store.put_bytes_if(b"again", "ptr", None)
    assert store.get_versioned("ptr").tag == first
    second = store.put_bytes_if(b"two", "ptr", first)
    with pytest.raises(WriteConflict):
        store.put_bytes_if(b"stale", "ptr", first)
    assert store.get_versioned("ptr").data == b"two" and store.get_versioned("ptr").tag == second
    assert store.get_versioned("nothing") is None
    assert [o.key for o in store.list()] == ["ptr"]  # a LocalStore's lock file is not an object


def test_racing_conditional_writes_have_exactly_one_winner(store):
    import threading

    from sknet.storage import WriteConflict

    for round_ in range(5):
        tag = store.put_bytes_if(b"base", f"ptr-{round_}", None)
        start, won, lost = threading.Barrier(6), [], []

        def write(n, key=f"ptr-{round_}", start=start, tag=tag, won=won, lost=lost):
            start.wait()
            try:
                store.put_bytes_if(f"writer {n}".encode(), key, tag)
                won.append(n)
            except WriteConflict:
                lost.append(n)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and len(lost) == 5
        assert store.get_bytes(f"ptr-{round_}") == f"writer {won[0]}".encode()


def test_exclusive_publish_refuses_a_prefix_another_execution_is_writing(store, files):
    from sknet.storage import WriteConflict, claim

    held = claim(store, "rel/v1")  # another execution, alive (renewed just now)
    claimed = rf"rel/v1 is being written by another execution \(host .* pid {os.getpid()}"
    with pytest.raises(WriteConflict, match=claimed):
        publish(store, "rel/v1", files, exclusive=True)
    assert [o.key for o in store.list("rel/")] == ["rel/v1/.writing"]  # nothing of this execution's
    assert store.get_versioned("rel/v1/.writing").tag == held.tag


def test_an_abandoned_claim_is_taken_over_and_removed_after_publishing(store, files):
    import json

    store.put_bytes(json.dumps({"owner": "dead", "host": "gone", "pid": 1, "renewed_at": "2026-01-01T00:00:00+00:00"})
                    .encode(), "rel/v1/.writing")  # a process killed mid-way, long ago
    manifest = publish(store, "rel/v1", files, exclusive=True)
    assert read_manifest(store, "rel/v1") == manifest
    assert not store.exists("rel/v1/.writing")


def test_a_writer_whose_claim_was_taken_over_stops_before_the_manifest(store):
    from sknet.storage import WriteConflict, claim, renew

    hold = claim(store, "rel/v1")
    store.put_bytes(b'{"owner": "other"}', "rel/v1/.writing")  # taken over after the lease
    with pytest.raises(WriteConflict, match=r"rel/v1/\.writing: this execution's claim was taken over"):
        renew(hold)


def test_a_claim_records_its_holder_host_pid_and_prefix(store):
    import json
    import socket

    from sknet.storage import WriteConflict, claim

    claim(store, "releases/m/v1", holder="flow-run-a")
    record = json.loads(store.get_bytes("releases/m/v1/.writing"))
    assert {k: record[k] for k in ("holder", "prefix", "host", "pid")} == {
        "holder": "flow-run-a", "prefix": "releases/m/v1", "host": socket.gethostname(), "pid": os.getpid()}
    with pytest.raises(WriteConflict, match=r"releases/m/v1 is being written by another execution "
                                            rf"\(flow run flow-run-a, host .* pid {os.getpid()}"):
        claim(store, "releases/m/v1", holder="flow-run-b")


def test_the_same_flow_run_takes_its_own_claim_over_at_once(store, files):
    from sknet.storage import WriteConflict, claim

    claim(store, "rel/v1", holder="flow-run-a")  # left by an attempt killed mid-way, renewed just now
    with pytest.raises(WriteConflict, match=r"being written by another execution \(flow run flow-run-a"):
        publish(store, "rel/v1", files, exclusive=True, holder="flow-run-b")
    with pytest.raises(WriteConflict, match=r"being written by another execution \(flow run flow-run-a"):
        publish(store, "rel/v1", files, exclusive=True)  # a writer that names no flow run
    manifest = publish(store, "rel/v1", files, exclusive=True, holder="flow-run-a")  # the retry
    assert read_manifest(store, "rel/v1") == manifest and not store.exists("rel/v1/.writing")


def test_a_claim_left_beside_a_manifest_is_removed_by_the_next_publication(store, files):
    import json

    from sknet.storage import WriteConflict, claim, clear_published_claim

    publish(store, "rel/v1", files)
    claim(store, "rel/v1", holder="flow-run-a")  # killed between the manifest and the claim's removal
    with pytest.raises(WriteConflict, match=r"rel/v1: already published by another execution"):
        publish(store, "rel/v1", files, exclusive=True, holder="flow-run-b")
    assert not store.exists("rel/v1/.writing")
    assert clear_published_claim(store, "rel/v1") and not clear_published_claim(store, "rel/v2")
    store.put_bytes(json.dumps({"holder": "x"}).encode(), "rel/v2/.writing")  # unpublished: the claim stays
    assert store.exists("rel/v2/.writing")


def test_exclusive_publish_refuses_a_prefix_already_published(store, files):
    from sknet.storage import WriteConflict

    publish(store, "rel/v1", files, exclusive=True)
    with pytest.raises(WriteConflict, match=r"rel/v1: already published by another execution"):
        publish(store, "rel/v1", files, exclusive=True)
    assert not store.exists("rel/v1/.writing")


def test_a_multipart_object_is_verified_in_the_part_size_it_was_uploaded_with(s3_server, bucket, tmp_path):
    import hashlib

    from multipart import upload_in_parts

    data = os.urandom(11 * 2**20)
    local = tmp_path / "ckpt.bin"
    local.write_bytes(data)
    store = S3Store(f"s3://{bucket}", endpoint_url=s3_server.endpoint)
    upload_in_parts(store.client, bucket, "ckpt.bin", data, 5 * 2**20)  # 3 parts of 5 MiB, not boto3's 8 MiB
    digest = hashlib.sha256(data).hexdigest()
    store.verify("ckpt.bin", len(data), digest, local=local)  # the composite checksum, from the local copy
    store.verify("ckpt.bin", len(data), digest)  # without one: downloaded and hashed
    upload_in_parts(store.client, bucket, "ckpt.bin", data[:-1] + b"\0", 5 * 2**20)
    for copy in (local, None):
        with pytest.raises(StorageError, match=r"ckpt\.bin: content differs from the manifest"):
            store.verify("ckpt.bin", len(data), digest, local=copy)


def test_publishing_aborts_uploads_cut_off_under_its_prefix(s3_server, bucket, files):
    from multipart import upload_in_parts

    store = S3Store(f"s3://{bucket}", endpoint_url=s3_server.endpoint)
    for key in ("rel/dir/a.bin", "rel/old.bin", "elsewhere/x.bin"):  # processes killed mid-upload
        upload_in_parts(store.client, bucket, key, os.urandom(6 * 2**20), 5 * 2**20, complete=False)
    publish(store, "rel", files)
    open_uploads = store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in open_uploads] == ["elsewhere/x.bin"]
    assert read_manifest(store, "rel")["files"].keys() == {"dir/a.bin", "b.txt"}


def test_a_presigned_url_is_logged_without_its_signature_credential_or_token(s3_server, bucket):
    import boto3
    from botocore.config import Config

    from sknet.storage import redact_url

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, config=Config(signature_version="s3v4"))
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "cifar-10-binary.tar.gz"},
                                        ExpiresIn=600)
    redacted = redact_url(url + "&X-Amz-Security-Token=FQoGZXIvYXdz")
    assert redacted.startswith(f"{s3_server.endpoint}/{bucket}/cifar-10-binary.tar.gz?")
    for name in ("X-Amz-Credential", "X-Amz-Signature", "X-Amz-Security-Token"):
        assert f"{name}=REDACTED" in redacted
    assert "sknet-test-key" not in redacted and "X-Amz-Expires=600" in redacted


@pytest.mark.parametrize("url, expected", [
    ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    ("https://obs.example.com/b/k?AccessKeyId=AK&Expires=1&Signature=c2ln", "https://obs.example.com/b/k?AccessKeyId=REDACTED&Expires=1&Signature=REDACTED"),
    ("https://a.blob.core.windows.net/c/k?sv=2024&se=x&sig=S%3D", "https://a.blob.core.windows.net/c/k?sv=2024&se=x&sig=REDACTED"),
    ("https://user:pass@mirror.example/k.tar.gz?token=t&v=2#top", "https://user:REDACTED@mirror.example/k.tar.gz?token=REDACTED&v=2#top"),
])
def test_redact_url_keeps_everything_but_secrets(url, expected):
    from sknet.storage import redact_url

    assert redact_url(url) == expected
