"""Two small pieces the promotion receiver and the tests' server fixtures share: a JSON answer from a
stdlib HTTP handler, and stopping a process started in its own session (its whole process group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from http.server import BaseHTTPRequestHandler
from typing import Any


def answer_json(handler: BaseHTTPRequestHandler, status: int, document: dict[str, Any]) -> None:
    """Answer ``handler``'s request with ``document`` as JSON (headers only for a HEAD request)."""
    body = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def stop_process_group(process: subprocess.Popen, *, timeout_s: float = 30) -> None:
    """SIGTERM the process group of ``process`` (started with ``start_new_session=True``), waiting at most
    ``timeout_s``; then SIGKILL it. A process that already ended is left alone."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
