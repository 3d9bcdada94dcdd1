"""Stage → fetch → verify of a full-size dataset through a real S3 server and a file:// store."""

import json
import re
import tarfile

import pytest

from helpers import make_tarball
from sknet.data.cache import VERIFIED_MARKER, fetch, verify_remote
from sknet.data.layout import CLASS_NAMES, LAYOUT_DIR, TEST_FILE
from sknet.data.manifest import dataset_manifest, manifest_digest
from sknet.data.stage import stage
from sknet.errors import DataError
from sknet.storage import IncompleteError, LocalStore, S3Store

S3_PREFIX = "datasets/cifar10"


LOCAL_METHODS = {"GetObject": ("get", "get_bytes"), "HeadObject": ("exists", "verify"),
                 "PutObject": ("put", "put_bytes"), "CreateMultipartUpload": ()}


def count_calls(store, operation):
    """Record every S3 `operation` request (or the LocalStore methods doing the same job)."""
    calls = []
    if isinstance(store, S3Store):
        store.client.meta.events.register(f"before-call.s3.{operation}", lambda **kw: calls.append(1))
        return calls
    for method in LOCAL_METHODS[operation]:
        original = getattr(store, method)

        def counted(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        setattr(store, method, counted)
    return calls


def test_stage_fetch_round_trip(store, synthetic_data, tmp_path):
    uri = stage(str(synthetic_data), store)
    digest = dataset_manifest(synthetic_data)["digest"]
    assert uri == f"{store.uri}/{digest}"
    path, fetched = fetch(uri, store, tmp_path / "cache")
    assert fetched == digest and path == tmp_path / "cache" / digest / LAYOUT_DIR
    assert (path / VERIFIED_MARKER).exists()
    assert dataset_manifest(path)["files"] == dataset_manifest(synthetic_data)["files"]
    staged = json.loads(store.get_bytes(f"{digest}/manifest.json"))
    assert staged["files"]["data_batch_1.bin"]["records"] == 10_000 and staged["synthetic"] is True
    census = staged["census"]  # sknet.data.census, taken before the upload (tests/test_census.py)
    assert census["splits"]["train"]["classes"] == dict.fromkeys(CLASS_NAMES, 5_000) and census["skewed"] == []


def test_second_fetch_is_served_from_cache_without_any_get(store, synthetic_data, tmp_path):
    uri = stage(str(synthetic_data), store)
    fetch(uri, store, tmp_path / "cache")
    gets = count_calls(store, "GetObject")
    heads = count_calls(store, "HeadObject")
    fetch(uri, store, tmp_path / "cache")
    assert gets == [] and heads == []


def test_restaging_identical_data_uploads_nothing(store, synthetic_data):
    from sknet.data.stage import stage_dataset

    first = stage_dataset(str(synthetic_data), store)
    puts = count_calls(store, "PutObject")
    uploads = count_calls(store, "CreateMultipartUpload")
    again = stage_dataset(str(synthetic_data), store)
    assert first.published and not again.published  # what the sknet-stage flow emits its event on
    assert again.uri == first.uri == f"{store.uri}/{dataset_manifest(synthetic_data)['digest']}"
    assert again.synthetic is True and again.digest == first.digest and again.repaired == ()
    assert puts == [] and uploads == []


def test_restaging_checks_the_objects_without_downloading_them(store, synthetic_data):
    from sknet.data.stage import stage_dataset

    stage_dataset(str(synthetic_data), store)
    gets = count_calls(store, "GetObject")
    heads = count_calls(store, "HeadObject")
    assert stage_dataset(str(synthetic_data), store).repaired == ()
    assert len(heads) == 8  # one check per object: S3's SHA256 checksum from a HEAD, a file hashed on file://
    assert len(gets) == (1 if isinstance(store, S3Store) else 0)  # S3: the manifest (a file:// store reads it)


def test_restaging_uploads_a_deleted_object_again_and_the_dataset_verifies(store, synthetic_data):
    from sknet.data.stage import stage_dataset

    first = stage_dataset(str(synthetic_data), store)
    store.delete(f"{first.digest}/data_batch_3.bin")
    puts = count_calls(store, "PutObject")
    again = stage_dataset(str(synthetic_data), store)
    assert not again.published and again.repaired == ("data_batch_3.bin",)
    assert again.to_dict()["repaired"] == ["data_batch_3.bin"] and len(puts) == 1
    assert verify_remote(again.uri, store)["files"] == 8


def test_restaging_uploads_damaged_objects_again(store, synthetic_data):
    from sknet.data.stage import stage_dataset

    first = stage_dataset(str(synthetic_data), store)
    data = bytearray(store.get_bytes(f"{first.digest}/data_batch_2.bin"))
    data[12345] ^= 0xFF  # same size, other content: only a checksum tells
    store.put_bytes(bytes(data), f"{first.digest}/data_batch_2.bin")
    store.put_bytes(store.get_bytes(f"{first.digest}/{TEST_FILE}")[:1000], f"{first.digest}/{TEST_FILE}")
    again = stage_dataset(str(synthetic_data), store)
    assert not again.published and again.repaired == ("data_batch_2.bin", TEST_FILE)
    assert verify_remote(again.uri, store)["files"] == 8


def test_restaging_over_a_manifest_that_is_not_json_publishes_the_dataset_again(store, synthetic_data):
    from sknet.data.stage import stage_dataset

    first = stage_dataset(str(synthetic_data), store)
    store.put_bytes(b"{not json", f"{first.digest}/manifest.json")
    again = stage_dataset(str(synthetic_data), store)
    assert again.published and again.repaired == ()
    assert verify_remote(again.uri, store)["files"] == 8


def assert_nothing_cached(cache, digest):
    assert not (cache / digest / LAYOUT_DIR).exists()
    assert not list((cache / digest).glob(".partial-*")) if (cache / digest).exists() else True


def test_flipped_byte_is_caught_and_nothing_is_cached(store, staged, tmp_path):
    uri, digest = staged
    data = bytearray(store.get_bytes(f"{digest}/data_batch_2.bin"))
    data[12345] ^= 0xFF
    store.put_bytes(bytes(data), f"{digest}/data_batch_2.bin")
    with pytest.raises(DataError, match=r"data_batch_2\.bin: sha256 differs from the manifest"):
        fetch(uri, store, tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache", digest)


def test_truncated_object_is_caught(store, staged, tmp_path):
    uri, digest = staged
    store.put_bytes(store.get_bytes(f"{digest}/{TEST_FILE}")[:1000], f"{digest}/{TEST_FILE}")
    with pytest.raises(DataError, match=r"test_batch\.bin: 1,000 bytes in the store, manifest says 30,730,000"):
        fetch(uri, store, tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache", digest)


def test_missing_object_is_caught(store, staged, tmp_path):
    uri, digest = staged
    store.delete(f"{digest}/data_batch_4.bin")
    with pytest.raises(DataError, match=r"data_batch_4\.bin: listed in the manifest but missing"):
        fetch(uri, store, tmp_path / "cache")


def test_extra_object_is_caught(store, staged, tmp_path):
    uri, digest = staged
    store.put_bytes(b"surprise", f"{digest}/data_batch_6.bin")
    with pytest.raises(DataError, match=r"data_batch_6\.bin: extra object not in the manifest"):
        fetch(uri, store, tmp_path / "cache")


def test_missing_manifest_reads_as_incomplete(store, staged, tmp_path):
    uri, digest = staged
    store.delete(f"{digest}/manifest.json")
    with pytest.raises(IncompleteError, match="no manifest.json"):
        fetch(uri, store, tmp_path / "cache")


def forge_dataset(store, staged_digest, files):
    """Publish a copy of a staged dataset under a manifest with `files` as its table (digest recomputed)."""
    manifest = json.loads(store.get_bytes(f"{staged_digest}/manifest.json"))
    manifest["files"] = files
    digest = manifest_digest(files)
    for name in files:
        source = name if name in manifest_files(store, staged_digest) else "test_batch.bin"
        store.put_bytes(store.get_bytes(f"{staged_digest}/{source}"), f"{digest}/{name}")
    store.put_bytes(json.dumps(manifest).encode(), f"{digest}/manifest.json")
    return f"{store.uri}/{digest}", digest


def manifest_files(store, digest):
    return json.loads(store.get_bytes(f"{digest}/manifest.json"))["files"]


@pytest.mark.parametrize("hostile", ["../../../../../escaped.txt", "/tmp/escaped.txt", "sub/test_batch.bin", ".."])
def test_a_manifest_naming_a_path_outside_the_layout_is_refused_and_nothing_is_written(
        s3_server, bucket, staged_s3, tmp_path, hostile):
    store, digest = staged_s3
    files = manifest_files(store, digest)
    files[hostile] = files.pop("test_batch.bin")
    uri, forged = forge_dataset(store, digest, files)
    cache = tmp_path / "deep" / "er" / "cache"
    with pytest.raises(DataError, match=rf"{forged}/manifest.json: names {re.escape(repr(hostile))}, which is "
                                        r"not a CIFAR-10 layout file"):
        fetch(uri, store, cache)
    with pytest.raises(DataError, match="not a CIFAR-10 layout file"):
        verify_remote(uri, store)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [cache / f"{forged}.lock"]  # the digest's flock


@pytest.fixture
def staged_s3(s3_server, bucket, synthetic_data):
    """A dataset staged on the S3 server, whose keys may contain `../` literally (unlike a directory)."""
    store = S3Store(f"s3://{bucket}/{S3_PREFIX}", endpoint_url=s3_server.endpoint)
    return store, stage(str(synthetic_data), store).rsplit("/", 1)[-1]


def test_a_manifest_altered_under_its_digest_is_refused(store, staged, tmp_path):
    uri, digest = staged
    manifest = json.loads(store.get_bytes(f"{digest}/manifest.json"))
    manifest["files"]["test_batch.bin"]["sha256"] = "0" * 64
    store.put_bytes(json.dumps(manifest).encode(), f"{digest}/manifest.json")
    with pytest.raises(DataError, match=r"hashes to [0-9a-f]{64}, not to the digest in the URI"):
        fetch(uri, store, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest}.lock"]


@pytest.mark.parametrize("suffix", ["..", ".", "", "ABC", "0" * 63, "0" * 64 + "/.."])
def test_a_dataset_uri_without_a_digest_is_refused_before_any_cache_path_is_made(store, tmp_path, suffix):
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="expected <store>/<digest>, the digest 64 lowercase hex"):
        fetch(f"{store.uri}/{suffix}", store, tmp_path / "cache")
    assert (tmp_path / "sibling" / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "cache").exists()


def test_tarball_with_wrong_md5_is_refused(tmp_path):
    tarball = make_tarball(tmp_path / "c.tar.gz", [("cifar-10-batches-bin/test_batch.bin", b"x")])
    with pytest.raises(DataError, match=r"c\.tar\.gz: MD5 [0-9a-f]{32}, expected c32a1d4ab5d03f1284b67883e8d87530"):
        stage(str(tarball), LocalStore(tmp_path / "store"))


def test_tarball_member_escaping_the_target_is_refused(tmp_path):
    from sknet.data.archive import _md5

    tarball = make_tarball(tmp_path / "evil.tar.gz", [("../evil.txt", b"x")])
    with pytest.raises(DataError, match=r"member '\.\./evil\.txt' escapes the target"):
        stage(str(tarball), LocalStore(tmp_path / "store"), expected_md5=_md5(tarball))
    assert not (tmp_path / "evil.txt").exists()


def test_tarball_with_a_link_is_refused(tmp_path):
    from sknet.data.archive import _md5

    tarball = tmp_path / "link.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(DataError, match="is a link; refusing to extract"):
        stage(str(tarball), LocalStore(tmp_path / "store"), expected_md5=_md5(tarball))


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tarball_with_a_device_or_fifo_is_refused(tmp_path, kind):
    from sknet.data.archive import _md5

    tarball = tmp_path / "dev.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.type, info.devmajor, info.devminor = kind, 1, 3
        archive.addfile(info)
    with pytest.raises(DataError, match="is not a regular file; refusing to extract"):
        stage(str(tarball), LocalStore(tmp_path / "store"), expected_md5=_md5(tarball))
    assert not list(tmp_path.rglob("test_batch.bin"))


def test_tarball_with_a_huge_member_is_refused_before_extracting_anything(tmp_path):
    from sknet.data.archive import MAX_MEMBER_BYTES, _md5

    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as sparse:
        sparse.truncate(MAX_MEMBER_BYTES + 1)  # zeros: compresses to almost nothing, a classic bomb
    tarball = tmp_path / "bomb.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(huge, arcname="cifar-10-batches-bin/data_batch_1.bin")
    with pytest.raises(DataError, match=r"member 'cifar-10-batches-bin/data_batch_1\.bin' is 61,460,001 bytes, "
                                        r"more than any CIFAR-10 file"):
        stage(str(tarball), LocalStore(tmp_path / "store"), expected_md5=_md5(tarball), work_dir=tmp_path)
    assert not list(tmp_path.rglob("sknet-stage-*"))


def test_a_tarball_downloaded_over_http_is_checked_and_staged(synthetic_data, tmp_path, caplog):
    """The path of `make run DATA=cifar10`: download with progress, MD5 check, extract, stage."""
    import functools
    import http.server
    import logging
    import threading

    from sknet.data.archive import _md5

    tarball = tmp_path / "served" / "cifar-10-binary.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz", compresslevel=1) as archive:
        archive.add(synthetic_data / LAYOUT_DIR, arcname=LAYOUT_DIR)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tarball.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{tarball.name}"
    try:
        with caplog.at_level(logging.INFO, logger="sknet"):
            uri = stage(url, LocalStore(tmp_path / "store"), expected_md5=_md5(tarball))
        assert uri.endswith(dataset_manifest(synthetic_data)["digest"])
        assert any(re.search(r"downloaded \d+/\d+ MB", r.getMessage()) for r in caplog.records)
        with pytest.raises(DataError, match=rf"{re.escape(url)}: MD5 [0-9a-f]{{32}}, expected 0{{32}}"):
            stage(url, LocalStore(tmp_path / "other"), expected_md5="0" * 32)
        assert not (tmp_path / "other").exists() or not any((tmp_path / "other").rglob("manifest.json"))
        presigned = f"{url}?X-Amz-Credential=AKIAEXAMPLE%2F20261129&X-Amz-Signature=canarysig0123&X-Amz-Expires=600"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sknet"), pytest.raises(DataError) as error:
            stage(presigned, LocalStore(tmp_path / "third"), expected_md5="0" * 32)
        said = str(error.value) + "\n".join(r.getMessage() for r in caplog.records)
        assert "downloading" in said and "X-Amz-Expires=600" in said  # the URL is still recognisable
        assert "canarysig0123" not in said and "AKIAEXAMPLE" not in said  # its signature never is
    finally:
        server.shutdown()


def test_cli_stage_verify_fetch_against_the_s3_server(s3_server, bucket, synthetic_data, tmp_path):
    from conftest import run_json

    endpoint = ["--endpoint-url", s3_server.endpoint]
    staged = run_json("-q", "data", "stage", "--source", str(synthetic_data),
                      "--dest", f"s3://{bucket}/datasets/cifar10", *endpoint)
    uri = staged["uri"]
    assert uri == f"s3://{bucket}/datasets/cifar10/{dataset_manifest(synthetic_data)['digest']}"
    assert staged["digest"] == uri.rsplit("/", 1)[-1] and staged["synthetic"] is True and "published" in staged
    verified = run_json("-q", "data", "verify", uri, *endpoint)
    assert verified["files"] == 8 and verified["synthetic"] is True
    fetched = run_json("-q", "data", "fetch", uri, "--cache", str(tmp_path / "cache"), *endpoint)
    assert (tmp_path / "cache" / verified["digest"] / LAYOUT_DIR / VERIFIED_MARKER).exists()
    assert fetched["digest"] == verified["digest"]


def test_cli_restage_repairs_a_deleted_object_so_that_verify_passes(s3_server, bucket, synthetic_data):
    from conftest import run_json, run_sknet

    endpoint = ["--endpoint-url", s3_server.endpoint]
    stage_args = ["-q", "data", "stage", "--source", str(synthetic_data), "--dest", f"s3://{bucket}/d", *endpoint]
    first = run_json(*stage_args)
    S3Store(f"s3://{bucket}/d", endpoint_url=s3_server.endpoint).delete(f"{first['digest']}/data_batch_1.bin")
    assert run_sknet("data", "verify", first["uri"], *endpoint, check=False).returncode == 2
    again = run_json(*stage_args)
    assert again == {**first, "published": False, "repaired": ["data_batch_1.bin"]}
    assert run_json("-q", "data", "verify", first["uri"], *endpoint)["files"] == 8


def test_cli_verify_names_a_corrupted_object(s3_server, bucket, synthetic_data, tmp_path):
    from conftest import run_sknet

    store = S3Store(f"s3://{bucket}/d", endpoint_url=s3_server.endpoint)
    uri = stage(str(synthetic_data), store)
    digest = uri.rsplit("/", 1)[-1]
    store.put_bytes(b"x" * 61, f"{digest}/batches.meta.txt")
    proc = run_sknet("data", "verify", uri, "--endpoint-url", s3_server.endpoint, check=False)
    assert proc.returncode == 2
    assert f"s3://{bucket}/d/{digest}/batches.meta.txt: content differs from the manifest" in proc.stderr


def test_an_unreachable_url_is_a_clear_error_naming_it(tmp_path):
    from sknet.ports import free_port

    url = f"http://127.0.0.1:{free_port()}/cifar-10-binary.tar.gz"
    with pytest.raises(DataError, match=rf"{re.escape(url)}: download failed"):
        stage(url, LocalStore(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_a_manifest_that_is_not_json_is_a_permanent_error_not_retried(store, staged, tmp_path):
    from prefect.states import Failed

    from sknet.storage import PermanentStorageError
    from tasks._support import transient_only

    uri, digest = staged
    store.put_bytes(b"{not json", f"{digest}/manifest.json")
    with pytest.raises(PermanentStorageError, match=r"manifest.json: not valid JSON") as error:
        fetch(uri, store, tmp_path / "cache")
    assert transient_only(None, None, Failed(data=error.value)) is False  # the fetch task fails at once
    assert_nothing_cached(tmp_path / "cache", digest)
