"""A fault-injecting HTTP proxy on loopback, put in front of the moto S3 server by the tests.

Requests are numbered 1, 2, 3, ... in arrival order (retries included). Request n gets:

- ``503 SlowDown`` (an S3 XML error) when ``n % fail_every == 0``;
- its connection dropped without any response when ``n % drop_every == 0``;
- for a GET of an object, the full headers but only half the body, then the connection closed, when
  ``n % truncate_every == 0``;
- otherwise, the upstream server's answer, byte for byte.

A rule with period 0 is off. Retries get new numbers, so every request eventually goes through.

Two more knobs, off by default: ``bytes_per_s`` limits the bandwidth of the link (request and response
bodies together, shared by all connections: a slow network to S3), and ``hold(method, path)`` picks
the first request it is true for and keeps it unanswered (nothing forwarded) until ``release()``:
``held`` is set once it arrives, so a test can kill the client in the middle of that upload.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                  b"<Message>Please reduce your request rate.</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "content-length"}


CHUNK = 256 * 1024  # bytes moved between two bandwidth checks


class Bandwidth:
    """A link of ``bytes_per_s`` shared by all its connections (0: unlimited): ``take(n)`` returns once
    the link has had the time to carry ``n`` more bytes."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self._free_at = 0.0
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        if self.bytes_per_s <= 0:
            return
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + size / self.bytes_per_s
            wait = self._free_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)


class QuietServer(ThreadingHTTPServer):
    """Injected resets make the client hang up on us too: that is expected, not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return


class FaultyProxy:
    """``with FaultyProxy(upstream_url, fail_every=3) as proxy:`` then point boto3 at ``proxy.url``."""

    def __init__(self, upstream: str, *, fail_every: int = 3, drop_every: int = 7, truncate_every: int = 5,
                 bytes_per_s: float = 0.0, hold: Callable[[str, str], bool] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.fail_every, self.drop_every, self.truncate_every = fail_every, drop_every, truncate_every
        self.faults: Counter[str] = Counter()
        self.link = Bandwidth(bytes_per_s)
        self.hold = hold
        self.held = threading.Event()
        self._released = threading.Event()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._server = QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def next_number(self) -> int:
        with self._lock:
            return next(self._numbers)

    def count(self, fault: str) -> None:
        with self._lock:
            self.faults[fault] += 1

    def release(self) -> None:
        """Let go of the held request: its connection is closed, nothing forwarded."""
        self._released.set()

    def holds(self, method: str, path: str) -> bool:
        """Whether this request is the one to hold (the first that ``hold`` picks)."""
        if self.hold is None or not self.hold(method, path):
            return False
        with self._lock:
            if self.held.is_set():
                return False
            self.held.set()
            return True

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                return

            def do_any(self) -> None:
                if proxy.holds(self.command, self.path):
                    proxy.count("held")
                    proxy._released.wait()
                    self.reset_connection()
                    return
                chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
                body = self.read_chunked() if chunked else self.read_body(int(self.headers.get("Content-Length") or 0))
                n = proxy.next_number()
                if proxy.fail_every and n % proxy.fail_every == 0:
                    proxy.count("503")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN_BODY)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN_BODY)
                    return
                if proxy.drop_every and n % proxy.drop_every == 0:
                    proxy.count("drop")
                    self.reset_connection()
                    return
                status, reason, headers, payload = self.forward(body)
                truncate = (proxy.truncate_every and n % proxy.truncate_every == 0 and self.command == "GET"
                            and status == 200 and "list-type" not in self.path and len(payload) > 1)
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                # a HEAD's answer has no body: its Content-Length is the object's (pyarrow reads it)
                upstream_length = {name.lower(): value for name, value in headers}.get("content-length", "0")
                length = upstream_length if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length)
                self.end_headers()
                if truncate:
                    proxy.count("truncate")
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.reset_connection()
                    return
                if self.command != "HEAD":
                    for start in range(0, len(payload), CHUNK):
                        proxy.link.take(len(payload[start : start + CHUNK]))
                        self.wfile.write(payload[start : start + CHUNK])

            def read_chunked(self) -> bytes:
                """A ``Transfer-Encoding: chunked`` body (pyarrow's S3 uploads), de-chunked (forwarded with a
                Content-Length; the payload, e.g. aws-chunked, is left as it is)."""
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.read_body(size))
                    self.rfile.readline()  # the CRLF after the chunk

            def read_body(self, length: int) -> bytes:
                chunks = []
                while length > 0:
                    chunk = self.rfile.read(min(CHUNK, length))
                    if not chunk:
                        break
                    proxy.link.take(len(chunk))
                    chunks.append(chunk)
                    length -= len(chunk)
                return b"".join(chunks)

            def forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.reason, response.getheaders(), response.read()
                finally:
                    conn.close()

            def reset_connection(self) -> None:
                """Close with a TCP RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                except OSError:
                    pass

            def finish(self) -> None:
                try:
                    super().finish()
                except (OSError, ValueError):  # the socket was reset on purpose
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

        return Handler
