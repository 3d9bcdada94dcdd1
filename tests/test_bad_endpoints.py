"""An S3 endpoint that hangs or answers garbage fails in bounded time with an error naming the endpoint."""

import socket
import threading
import time

import pytest

from sknet.config import load_config
from sknet.storage import StorageError, store_from_config


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    fake = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in fake.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def endpoint(request):
    """A TCP server on loopback that accepts and then hangs, or answers `request.param` bytes and closes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            if request.param is None:
                held.append(conn)  # never answers
            else:
                conn.recv(65536)
                conn.sendall(request.param)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    for conn in held:
        conn.close()
    server.close()


def store_at(endpoint: str):
    cfg = load_config("cpu-smoke", ["storage.uri=s3://sknet-bucket/runs", f"storage.endpoint_url={endpoint}",
                                    "storage.timeout_seconds=1", "storage.max_attempts=2"])
    return store_from_config(cfg.storage)


@pytest.mark.parametrize("endpoint", [None], indirect=True, ids=["hangs"])
def test_a_hanging_endpoint_fails_within_its_timeout_naming_itself(endpoint, tmp_path):
    started = time.monotonic()
    with pytest.raises(StorageError, match=rf"s3://sknet-bucket/runs/x at {endpoint}: .*Timeout.* "
                                           r"\(no answer within 1 s: storage\.timeout_seconds\)"):
        store_at(endpoint).get("x", tmp_path / "x")
    assert time.monotonic() - started < 20  # 2 tries of 1 s, and backoff


@pytest.mark.parametrize("endpoint", [b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot s3 :)", b"garbage\r\n\r\n"],
                         indirect=True, ids=["not-s3", "not-http"])
def test_an_endpoint_answering_garbage_is_a_clear_error_naming_it(endpoint, tmp_path):
    with pytest.raises(StorageError, match=rf"s3://sknet-bucket/runs/datasets at {endpoint}: \w+"):
        store_at(endpoint).list("datasets")
