"""Staging is bounded (issue #19): a download's bytes and time, a tarball's members and extracted bytes, and a
killed stage's scratch; an HTTP source answering garbage or too little is a clear error naming it.

The limits are module constants, set small here so that each test takes seconds."""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from helpers import make_tarball
from sknet.data import archive, download
from sknet.data.archive import _md5
from sknet.data.stage import SCRATCH_OWNER, SCRATCH_PREFIX, stage
from sknet.errors import DataError
from sknet.storage import LocalStore

SIGNED = "?X-Amz-Credential=AKIAEXAMPLE%2F20261201&X-Amz-Signature=canarysig0123&X-Amz-Expires=600"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def serve():
    """`serve(answer, tls=None)` → the URL of a loopback server (HTTPS with a `tls` context) that reads each
    request, then lets `answer(conn, stop)` write whatever it likes (raw bytes: a malformed, dripping or short
    answer); all stop at teardown."""
    stop, servers = threading.Event(), []

    def reply(conn: socket.socket, answer, tls: ssl.SSLContext | None) -> None:
        with conn:
            try:
                conn = tls.wrap_socket(conn, server_side=True) if tls else conn
                conn.recv(65536)
                answer(conn, stop)
            except OSError:  # the client went away
                pass

    def accept(server: socket.socket, answer, tls: ssl.SSLContext | None) -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # the accept timeout: look at `stop` again
                continue
            threading.Thread(target=reply, args=(conn, answer, tls), daemon=True).start()

    def start(answer, tls: ssl.SSLContext | None = None) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(0.2)
        servers.append(server)
        threading.Thread(target=accept, args=(server, answer, tls), daemon=True).start()
        return f"http{'s' if tls else ''}://127.0.0.1:{server.getsockname()[1]}/cifar-10-binary.tar.gz"

    yield start
    stop.set()
    for server in servers:
        server.close()


def no_length(conn, stop):
    """A body without a length: zeros until the client hangs up, or 64 MiB (a client without a cap stops there
    instead of filling the disk)."""
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\n\r\n")
    for _ in range(2**10):
        if stop.is_set():
            return
        conn.sendall(bytes(2**16))


def drip(*, headers: bytes, for_seconds: float = 8.0):
    """Send `headers`, then one byte every 0.2 s for `for_seconds` (or until the test ends), then hang up."""
    def answer(conn, stop):
        conn.sendall(headers)
        until = time.monotonic() + for_seconds
        while time.monotonic() < until and not stop.wait(0.2):
            conn.sendall(b"x")
    return answer


DRIP_BODY_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
DRIP_BODY = drip(headers=DRIP_BODY_HEADERS)
DRIP_HEADERS = drip(headers=b"HTTP/1.1 200 OK\r\nX-Drip: ")


def staging_fails(source: str, tmp_path: Path, **kwargs) -> DataError:
    """The DataError of staging `source` (work dir `tmp_path/work`), after checking nothing was left behind."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    with pytest.raises(DataError) as error:
        stage(source, LocalStore(tmp_path / "store"), work_dir=work, **kwargs)
    assert list(work.iterdir()) == [] and not (tmp_path / "store").exists()
    return error.value


def assert_names_url_redacted(message: str, url: str) -> None:
    assert url.split("?")[0] in message and "X-Amz-Expires=600" in message
    assert "canarysig0123" not in message and "AKIAEXAMPLE" not in message


def test_a_body_without_a_length_is_refused_once_past_the_download_cap(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 2**20)
    url = serve(no_length)
    error = staging_fails(url, tmp_path)
    assert re.match(rf"{re.escape(url)}: [\d,]+ bytes received and more coming, more than the 1,048,576 bytes a "
                    r"download may have \(MAX_DOWNLOAD_BYTES", str(error))


def test_a_declared_length_past_the_download_cap_is_refused_before_reading_the_body(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 2**20)
    url = serve(drip(headers=b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n"))
    started = time.monotonic()
    error = staging_fails(url, tmp_path)
    assert str(error).startswith(f"{url}: its Content-Length is 1,000,000,000,000 bytes, more than the 1,048,576")
    assert time.monotonic() - started < 4  # the server would drip for 8 s


@pytest.mark.parametrize("answer", [DRIP_BODY, DRIP_HEADERS], ids=["drips-the-body", "drips-the-headers"])
def test_a_dripping_server_is_refused_at_the_download_deadline_naming_the_url(serve, tmp_path, monkeypatch, answer):
    monkeypatch.setattr(download, "DOWNLOAD_DEADLINE_SECONDS", 1.0)
    url = serve(answer) + SIGNED
    started = time.monotonic()
    error = staging_fails(url, tmp_path)
    assert time.monotonic() - started < 5  # each byte came well within the 60 s timeout of a read
    assert "not downloaded within 1 s (DOWNLOAD_DEADLINE_SECONDS, the deadline of a whole download)" in str(error)
    assert_names_url_redacted(str(error), url)


def test_the_download_deadline_holds_over_https(serve, tmp_path, monkeypatch):
    """The official URL is HTTPS: TLS takes over the socket the deadline watches, and must not hide it."""
    monkeypatch.setattr(download, "DOWNLOAD_DEADLINE_SECONDS", 1.0)
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed_certificate(tmp_path / "tls")))  # the client trusts it
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    url = serve(DRIP_BODY, tls)
    started = time.monotonic()
    error = staging_fails(url, tmp_path)
    assert time.monotonic() - started < 5
    assert str(error).startswith(f"{url}: not downloaded within 1 s (DOWNLOAD_DEADLINE_SECONDS")


def self_signed_certificate(directory: Path) -> Path:
    """`cert.pem` (for 127.0.0.1, its own issuer) and `key.pem` in `directory`; returns the certificate."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(ski, False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
            .sign(key, hashes.SHA256()))
    directory.mkdir()
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory / "cert.pem"


@pytest.mark.parametrize("status", [b"garbage", b"HTTP/1.1 abc OK", b"SSH-2.0-OpenSSH_9.6"])
def test_a_bad_status_line_is_a_clear_error_naming_the_url_and_the_line(serve, tmp_path, status):
    url = serve(lambda conn, stop: conn.sendall(status + b"\r\n\r\n")) + SIGNED
    error = staging_fails(url, tmp_path)
    assert f"the server's answer is not HTTP (status line {status.decode()!r}); check the URL" in str(error)
    assert_names_url_redacted(str(error), url)


def test_a_body_shorter_than_its_content_length_is_reported_before_any_md5_check(serve, tmp_path):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes(10)
    url = serve(lambda conn, stop: conn.sendall(answer)) + SIGNED
    error = staging_fails(url, tmp_path)
    assert "got 10 of 1,000 bytes (its Content-Length) before the server closed the connection" in str(error)
    assert "MD5" not in str(error)
    assert_names_url_redacted(str(error), url)


def test_a_tarball_extracting_past_the_cap_is_refused_at_the_member_that_passes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_EXTRACTED_BYTES", 1_000)
    parts = [("cifar-10-batches-bin/batches.meta.txt", 600), ("cifar-10-batches-bin/readme.html", 600)]
    bomb = make_tarball(tmp_path / "bomb.tar.gz", parts)
    error = staging_fails(str(bomb), tmp_path, expected_md5=_md5(bomb))
    assert str(error) == (f"{bomb}: member 'cifar-10-batches-bin/readme.html' takes the bytes extracted past 1,000, "
                          "the most a tarball may extract to (MAX_EXTRACTED_BYTES: twice the 184,380,000 of a "
                          "CIFAR-10 layout); refused before extracting it: a decompression bomb or not CIFAR-10")


def test_a_tarball_with_too_many_members_is_refused_at_the_first_one_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 2)
    names = ["batches.meta.txt", "readme.html", "SYNTHETIC.json"]
    many = make_tarball(tmp_path / "many.tar.gz", [(f"cifar-10-batches-bin/{name}", 1) for name in names])
    error = staging_fails(str(many), tmp_path, expected_md5=_md5(many))
    assert str(error) == (f"{many}: more than 2 members, the most a tarball may have (MAX_MEMBERS; the official "
                          "CIFAR-10 tarball has 9); refused at member 'cifar-10-batches-bin/SYNTHETIC.json', this is "
                          "not CIFAR-10")


@pytest.mark.parametrize("member, size, message", [
    ("cifar-10-batches-bin/part-0.bin", 30_000_000, "is not a file of the CIFAR-10 binary layout"),
    ("elsewhere/data_batch_1.bin", 30_730_000, "is not a file of the CIFAR-10 binary layout"),
    ("cifar-10-batches-bin/data_batch_1.bin", 30_000_000, "is 30,000,000 bytes, expected 30,730,000"),
    ("cifar-10-batches-bin/batches.meta.txt", 30_000_000, "expected at most 4,096"),
])
def test_a_member_that_is_not_a_cifar10_file_at_its_size_is_refused_before_anything_is_written(
        tmp_path, member, size, message):
    """Issue #27 §7: ten 30 MB members of other names passed the caps and filled a small scratch."""
    tarball = make_tarball(tmp_path / "odd.tar.gz", [(member, size)])
    error = staging_fails(str(tarball), tmp_path, expected_md5=_md5(tarball))
    assert message in str(error) and repr(member) in str(error)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size >= size]


def test_a_member_twice_is_refused(tmp_path):
    meta = ("cifar-10-batches-bin/batches.meta.txt", 10)
    tarball = make_tarball(tmp_path / "twice.tar.gz", [meta, meta])
    assert "appears twice" in str(staging_fails(str(tarball), tmp_path, expected_md5=_md5(tarball)))


def test_a_scratch_too_small_for_the_layout_is_a_clear_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 256 << 20})())
    monkeypatch.setattr(archive, "LAYOUT_BYTES", 300 << 20)  # the layout needs more than the 256 MB free
    tarball = make_tarball(tmp_path / "ok.tar.gz", [("cifar-10-batches-bin/batches.meta.txt", 10)])
    error = staging_fails(str(tarball), tmp_path, expected_md5=_md5(tarball))
    assert re.search(r"extracted: 268,435,456 bytes free, 314,572,800 needed to extract a CIFAR-10 layout", str(error))


def test_a_full_disk_while_extracting_is_a_clear_error_naming_the_directory(tmp_path, monkeypatch):
    import errno

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extract", full)
    tarball = make_tarball(tmp_path / "ok.tar.gz", [("cifar-10-batches-bin/batches.meta.txt", 10)])
    error = staging_fails(str(tarball), tmp_path, expected_md5=_md5(tarball))
    assert "no space left on its device while writing 10 bytes" in str(error) and "extracted" in str(error)


def wrong_md5_tarball(tmp_path: Path) -> Path:
    return make_tarball(tmp_path / "next.tar.gz", [("cifar-10-batches-bin/test_batch.bin", 1)])


def stage_next(tmp_path: Path, work: Path) -> None:
    """Another stage in `work`, which fails quickly (a wrong MD5) once it has claimed its scratch."""
    with pytest.raises(DataError, match="MD5"):
        stage(str(wrong_md5_tarball(tmp_path)), LocalStore(tmp_path / "store"), work_dir=work)


@pytest.fixture
def stage_in_a_process(serve, tmp_path):
    """`sknet data stage` of a dripping URL in another process, blocked in its download: (process, its scratch)."""
    work = tmp_path / "work"
    work.mkdir()
    url = serve(drip(headers=DRIP_BODY_HEADERS, for_seconds=60))
    code = (f"from sknet.data.stage import stage; from sknet.storage import LocalStore; "
            f"stage({url!r}, LocalStore({str(tmp_path / 'store')!r}), work_dir={str(work)!r})")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 30
    while not (downloading := list(work.glob(f"{SCRATCH_PREFIX}*/download.tar.gz"))) and time.monotonic() < deadline:
        assert process.poll() is None, "the stage in the other process ended before it was killed"
        time.sleep(0.05)
    assert downloading, "the stage in the other process did not start its download within 30 s"
    yield process, downloading[0].parent
    process.kill()
    process.wait()


def test_a_killed_stages_scratch_is_removed_by_the_next_stage(stage_in_a_process, tmp_path):
    process, scratch = stage_in_a_process
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert scratch.is_dir()  # what a kill leaves
    stage_next(tmp_path, scratch.parent)
    assert list(scratch.parent.iterdir()) == []


def test_a_running_stages_scratch_is_left_alone(stage_in_a_process, tmp_path):
    process, scratch = stage_in_a_process
    stage_next(tmp_path, scratch.parent)
    assert process.poll() is None and list(scratch.parent.iterdir()) == [scratch]
    assert (scratch / "download.tar.gz").exists()


@pytest.mark.parametrize("owner, removed", [
    (lambda: {"host": socket.gethostname(), "pid": os.getpid(), "started": 1.0}, True),  # a reused PID
    (lambda: {"host": "another-host", "pid": 2**22 + 1, "started": 1.0}, False),  # not ours to judge
    (lambda: None, False),  # no record: being created, or left by an older version
    (lambda: "not json {", False),
], ids=["pid-reused", "another-host", "no-record", "bad-record"])
def test_scratch_is_removed_only_when_its_recorded_owner_is_gone(tmp_path, owner, removed):
    work = tmp_path / "work"
    scratch = work / f"{SCRATCH_PREFIX}old"
    scratch.mkdir(parents=True)
    if (record := owner()) is not None:
        (scratch / SCRATCH_OWNER).write_text(record if isinstance(record, str) else json.dumps(record))
    stage_next(tmp_path, work)
    assert scratch.exists() is not removed
