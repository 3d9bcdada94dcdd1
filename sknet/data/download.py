"""A source URL downloaded within bounds: its bytes (`MAX_DOWNLOAD_BYTES`) and the whole download's time
(`DOWNLOAD_DEADLINE_SECONDS`, not per read); an answer that is not HTTP, or shorter than it said, is refused."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import urllib.request
from pathlib import Path

from sknet.errors import DataError
from sknet.storage import (
    redact_url,
)

log = logging.getLogger(__name__)


MAX_DOWNLOAD_BYTES = 2 * 170_052_171  # twice the official cifar-10-binary.tar.gz (an uncompressed tar fits too)

DOWNLOAD_DEADLINE_SECONDS = 3600.0  # a whole download, first byte to last: the official tarball at ≥ 47 kB/s

def _download(url: str, target: Path) -> None:
    """Download `url` within `MAX_DOWNLOAD_BYTES` and `DOWNLOAD_DEADLINE_SECONDS`; logs and errors show it without
    its signature or token (a presigned URL is a secret)."""
    shown = redact_url(url)
    _refuse_unquoted(url, shown)
    log.info("downloading %s", shown)
    with _Deadline(DOWNLOAD_DEADLINE_SECONDS) as deadline:
        try:
            _copy_url(url, target, shown, deadline)
        except (OSError, http.client.HTTPException) as exc:  # HTTPError, URLError, timeouts, a malformed answer
            if deadline.expired.is_set():
                raise _past_deadline(shown, deadline) from None
            raise _download_error(shown, exc) from None

def _refuse_unquoted(url: str, shown: str) -> None:
    """Refuse a URL with a space or a control character before any request (urllib would raise `InvalidURL` quoting
    the URL in full, signature and all)."""
    if found := re.search(r"[\x00-\x20\x7f]", url):
        what = "a space" if found.group() == " " else f"the control character {found.group()!r}"
        raise DataError(f"{shown}: the URL has {what} at character {found.start() + 1}; a URL must be "
                        "percent-encoded (a space is %20): copy it again, whole, or encode it")

def _copy_url(url: str, target: Path, shown: str, deadline: _Deadline) -> None:
    """Copy the body to `target`, refused past `MAX_DOWNLOAD_BYTES`, at the deadline or short of its Content-Length."""
    with deadline.opener().open(url, timeout=60) as response, open(target, "wb") as out:
        total = response.length or 0  # http.client's reading of Content-Length (None: absent, invalid or chunked)
        if total > MAX_DOWNLOAD_BYTES:
            raise _too_big(shown, f"its Content-Length is {total:,} bytes")
        done, reported = 0, 0
        while block := response.read1(2**20):  # what has arrived: a deadline shutdown ends a read at once
            out.write(block)
            done += len(block)
            if done > MAX_DOWNLOAD_BYTES:
                raise _too_big(shown, f"{done:,} bytes received and more coming")
            if total and (tenth := 10 * done // total) > reported:  # every 10 %
                reported = tenth
                log.info("downloaded %d/%d MB (%d%%)", done // 2**20, total // 2**20, 100 * done // total)
    if deadline.expired.is_set():
        raise _past_deadline(shown, deadline)
    if done < total:
        raise DataError(f"{shown}: got {done:,} of {total:,} bytes (its Content-Length) before the server closed the "
                        f"connection: the download is incomplete; try again")
    log.info("downloaded %s: %s bytes", shown, f"{done:,}")

def _too_big(shown: str, what: str) -> DataError:
    return DataError(f"{shown}: {what}, more than the {MAX_DOWNLOAD_BYTES:,} bytes a download may have "
                     f"(MAX_DOWNLOAD_BYTES: twice the official CIFAR-10 tarball); refusing, this is not CIFAR-10")

def _past_deadline(shown: str, deadline: _Deadline) -> DataError:
    return DataError(f"{shown}: not downloaded within {deadline.seconds:g} s (DOWNLOAD_DEADLINE_SECONDS, the deadline "
                     f"of a whole download): the server is stalled or too slow; download the tarball another way "
                     f"and stage the file")

def _download_error(shown: str, exc: Exception) -> DataError:
    """The error of a failed download: the server's answer was not HTTP, or the network failed."""
    if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, ConnectionError):
        line = exc.line.rstrip()[:100]
        return DataError(f"{shown}: the server's answer is not HTTP (status line {line!r}); check the URL")
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, http.client.InvalidURL):
        return DataError(f"{shown}: the server's answer is malformed ({type(exc).__name__}: {exc}); check the URL")
    return DataError(f"{shown}: download failed ({exc}); check the URL and this machine's network access")

class _Deadline:
    """A whole download's deadline (a socket timeout bounds each read, not their sum: a server dripping a byte
    at a time never trips it). When it passes, every connection the download opened is shut down, which ends
    a blocked read at once, and `expired` is set."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                _shut_down(sock)

    def watch(self, sock: socket.socket) -> socket.socket:
        """Keep a duplicate of a new connection's socket (TLS detaches the original) to shut it down in time."""
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired.is_set():
                _shut_down(sock)
        return sock

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's usual opener (proxies, redirects, TLS), whose every connection this deadline watches."""
        return urllib.request.build_opener(_WatchedHandler(self))

def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass

class _WatchedHandler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """urllib's HTTP and HTTPS handler, with each connection's socket given to `deadline` as it is created."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: type, req: urllib.request.Request, **kwargs: object) -> http.client.HTTPResponse:
        def connection(host: str, **options: object) -> http.client.HTTPConnection:
            conn = http_class(host, **options)
            create = conn._create_connection  # socket.create_connection: the hook http.client keeps for it
            conn._create_connection = lambda *args, **kw: self.deadline.watch(create(*args, **kw))
            return conn

        return super().do_open(connection, req, **kwargs)
