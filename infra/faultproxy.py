"""A tiny HTTP proxy on 127.0.0.1 in front of an S3 server that answers some requests with S3 server
errors (500 InternalError, 503 ServiceUnavailable, 503 SlowDown) and forwards the others: the first
`faults` requests, then each request with probability `rate` (seeded, for reproducible chaos runs; raise
and lower it at any time). Used by tests/test_faults.py and `python -m bench chaos`.

With `delay_seconds` (set at any time) it holds every request that long before answering: a slow or hung endpoint.

With `strip_checksums` it also plays a store without checksum support (some MinIO, OBS and Ceph
versions): the `x-amz-checksum-*` headers and `<Checksum…>` elements never reach the client.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHECKSUM_HEADER = "x-amz-checksum-"
CHECKSUM_ELEMENT = re.compile(rb"<Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>[^<]*</Checksum\w*>")

FAULTS = [
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "ServiceUnavailable", "Please reduce your request rate."),
    (503, "SlowDown", "Please reduce your request rate."),
]


class FaultProxy:
    """`faults` leading requests fail (cycling 500 / 503 / SlowDown), then each one with probability `rate`;
    the others go to `upstream_port`. `injected` and `forwarded` count what happened."""

    def __init__(self, upstream_port: int, faults: int = 0, *, rate: float = 0.0, seed: int | None = None,
                 strip_checksums: bool = False):
        self.upstream_port, self.remaining, self.injected, self.forwarded = upstream_port, faults, 0, 0
        self.rate, self.random = rate, random.Random(seed)
        self.strip_checksums, self.stripped = strip_checksums, 0
        self.delay_seconds = 0.0  # each request is held this long before it is answered
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.delay_seconds > 0:
                    time.sleep(proxy.delay_seconds)
                with proxy.lock:
                    fault = proxy._next_fault()
                    if not fault:
                        proxy.forwarded += 1
                if fault:
                    status, code, message = fault
                    payload = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                data = response.read()
                headers = response.getheaders()
                if proxy.strip_checksums:
                    data, headers = proxy.without_checksums(data, headers)
                self.send_response(response.status)
                length = {"content-length"} if self.command != "HEAD" else set()
                dropped = {"transfer-encoding", "connection"} | length
                for key, value in headers:
                    if key.lower() not in dropped:
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients drop connections after an injected fault: expected, not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _next_fault(self) -> tuple[int, str, str] | None:
        """The fault for the request now arriving, or None to forward it (call with the lock held)."""
        if self.remaining > 0:
            self.remaining -= 1
        elif not (self.rate > 0 and self.random.random() < self.rate):
            return None
        fault = FAULTS[self.injected % len(FAULTS)]
        self.injected += 1
        return fault

    def without_checksums(self, data: bytes, headers: list[tuple[str, str]]) -> tuple[bytes, list]:
        """The response as a store without checksum support sends it; counts what was removed."""
        kept = [(k, v) for k, v in headers if not k.lower().startswith(CHECKSUM_HEADER)]
        elements = 0
        if any(k.lower() == "content-type" and "xml" in v for k, v in headers):  # S3's answers, not objects
            data, elements = CHECKSUM_ELEMENT.subn(b"", data)
        with self.lock:
            self.stripped += len(headers) - len(kept) + elements
        return data, kept

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
