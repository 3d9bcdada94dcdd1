"""Which strings name a store and which are plain local paths: one set of checks, in sknet.storage."""

import pytest

from sknet.storage import file_uri_path, is_file_uri, is_object_store_uri, is_s3_uri


@pytest.mark.parametrize("uri", ["s3://bucket/datasets", "file:///srv/store", "gs://elsewhere"])
def test_a_uri_with_a_scheme_names_a_store(uri):
    assert is_object_store_uri(uri)


@pytest.mark.parametrize("path", ["work/data", "/abs/data", "s3-looking-dir/x", ""])
def test_a_plain_path_does_not(path):
    assert not is_object_store_uri(path)


def test_s3_and_file_uris_are_told_apart_by_their_scheme():
    assert is_s3_uri("s3://bucket") and not is_s3_uri("file:///srv/store") and not is_s3_uri("work/s3")
    assert is_file_uri("file:///srv/store") and not is_file_uri("s3://bucket")
    assert file_uri_path("file:///srv/store") == "/srv/store"
