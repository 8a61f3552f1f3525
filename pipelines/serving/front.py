"""The forwarding front: what clients call. ``/invocations``, ``/ping``, ``/health``, ``/version`` (any
method) go to the backend being served, method, path, headers and body unchanged, and its answer comes
back as it is; ``GET /served-version`` answers which version that is."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from pipelines.local_http import answer_json
from pipelines.serving.backend import ScoringServer

log = logging.getLogger(__name__)

SERVED_VERSION_PATH = "/served-version"
FORWARDED_PATHS = ("/invocations", "/ping", "/health", "/version")
# Headers of one connection, not of the request (RFC 9110 7.6.1); Content-Length is set anew, and
# Expect: 100-continue (curl's, for large bodies) is answered by the front itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length", "expect"})
FORWARD_TIMEOUT_S = 600.0


class Served(Protocol):
    def acquire(self) -> ScoringServer | None: ...
    def status(self) -> dict[str, Any]: ...


def end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers a proxy passes on: all but the hop-by-hop ones and those the Connection header names."""
    items = list(headers)
    named = {token.strip().lower() for key, value in items if key.lower() == "connection" for token in value.split(",")}
    return [(key, value) for key, value in items if key.lower() not in HOP_BY_HOP and key.lower() not in named]


def forward(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
            timeout_s: float = FORWARD_TIMEOUT_S) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """One request to the backend on loopback ``port``; (status, reason, end-to-end headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers:
            conn.putheader(key, value)
        if body or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.reason, end_to_end(response.getheaders()), response.read()
    finally:
        conn.close()


def handler_class(served: Served, *, forwarder: Callable[..., tuple[int, str, list[tuple[str, str]], bytes]]
                  = forward) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cyclegan-serve"
        protocol_version = "HTTP/1.1"

        def handle_any(self) -> None:
            route = self.path.split("?", 1)[0]
            if route == SERVED_VERSION_PATH and self.command == "GET":
                self.answer(HTTPStatus.OK, served.status())
                return
            if route not in FORWARDED_PATHS:
                self.answer(HTTPStatus.NOT_FOUND, {"error_code": "NOT_FOUND", "message": (
                    f"no such path {route}: POST /invocations, GET /ping, /health, /version or {SERVED_VERSION_PATH}")})
                return
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.answer(HTTPStatus.LENGTH_REQUIRED, {"error_code": "BAD_REQUEST",
                                                         "message": "send the body with a Content-Length"})
                return
            length = self.headers.get("Content-Length", "0") or "0"
            if not length.isdigit():
                self.answer(HTTPStatus.BAD_REQUEST, {"error_code": "BAD_REQUEST",
                                                     "message": f"Content-Length {length!r} is not a number"})
                return
            body = self.rfile.read(int(length)) if int(length) else b""
            backend = served.acquire()
            if backend is None:
                self.answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                                             "message": served.status()["state"]})
                return
            try:
                status, reason, headers, payload = forwarder(backend.port, self.command, self.path,
                                                             end_to_end(self.headers.items()), body)
            except (OSError, http.client.HTTPException) as exc:
                log.error("%s %s to %s failed: %s", self.command, route, backend.label, exc)
                self.answer(HTTPStatus.BAD_GATEWAY, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                                     "message": f"the scoring server of v{backend.version} "
                                                                f"did not answer ({exc})"})
                return
            finally:
                backend.leave()
            self.send_response(status, reason)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = handle_any

        def answer(self, status: int, document: dict[str, Any]) -> None:
            answer_json(self, status, document)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
