"""A fault-injecting HTTP proxy on loopback, put in front of the moto S3 server by the tests.

Requests are numbered 1, 2, 3, ... in arrival order (retries included). Request n gets:

- ``503 SlowDown`` (an S3 XML error) when ``n % fail_every == 0``;
- its connection dropped without any response when ``n % drop_every == 0``;
- for a GET of an object, the full headers but only half the body, then the connection closed, when
  ``n % truncate_every == 0``;
- otherwise, the upstream server's answer, byte for byte.

A rule with period 0 is off. Retries get new numbers, so every request eventually goes through.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                  b"<Message>Please reduce your request rate.</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "content-length"}


class QuietServer(ThreadingHTTPServer):
    """Injected resets make the client hang up on us too: that is expected, not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return


class FaultyProxy:
    """``with FaultyProxy(upstream_url, fail_every=3) as proxy:`` then point boto3 at ``proxy.url``."""

    def __init__(self, upstream: str, *, fail_every: int = 3, drop_every: int = 7, truncate_every: int = 5) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.fail_every, self.drop_every, self.truncate_every = fail_every, drop_every, truncate_every
        self.faults: Counter[str] = Counter()
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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def next_number(self) -> int:
        with self._lock:
            return next(self._numbers)

    def count(self, fault: str) -> None:
        with self._lock:
            self.faults[fault] += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                return

            def do_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
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
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if truncate:
                    proxy.count("truncate")
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.reset_connection()
                    return
                if self.command != "HEAD":
                    self.wfile.write(payload)

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
