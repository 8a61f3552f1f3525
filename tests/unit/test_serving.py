"""The model server's pure parts: which version it serves, when it switches, and what its front passes on."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipelines.embedded import free_port
from pipelines.promotion.flow import RolloutOutcome, summary_markdown
from pipelines.serving.backend import ScoringServer
from pipelines.serving.front import end_to_end, handler_class
from pipelines.serving.served import wait_until_served
from pipelines.serving.switch import plan_switch, wanted_version


def test_the_recorded_rollout_wins_over_the_alias() -> None:
    assert wanted_version(rolled_out="2", alias_version="3") == "2"


def test_before_any_rollout_the_alias_version_is_served() -> None:
    assert wanted_version(rolled_out=None, alias_version="3") == "3"


def test_a_new_wanted_version_is_started() -> None:
    plan = plan_switch(serving="1", wanted="2", failed_at={}, now=100.0, retry_after_s=60)
    assert (plan.action, plan.version) == ("start", "2")


def test_the_served_version_is_kept() -> None:
    assert plan_switch(serving="2", wanted="2", failed_at={}, now=100.0, retry_after_s=60).action == "keep"


def test_a_version_that_just_failed_is_not_retried_until_the_delay_passed() -> None:
    waiting = plan_switch(serving="1", wanted="2", failed_at={"2": 90.0}, now=100.0, retry_after_s=60)
    assert waiting.action == "wait" and "v1 stays served" in waiting.reason
    assert plan_switch(serving="1", wanted="2", failed_at={"2": 30.0}, now=100.0, retry_after_s=60).action == "start"


def test_nothing_to_serve_waits() -> None:
    assert plan_switch(serving=None, wanted=None, failed_at={}, now=0.0, retry_after_s=60).action == "wait"


def test_hop_by_hop_headers_and_those_connection_names_are_not_passed_on() -> None:
    headers = [("Content-Type", "application/json"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
               ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("Content-Length", "9"),
               ("Expect", "100-continue"), ("Authorization", "Bearer t"), ("X-Request-Id", "abc")]
    assert end_to_end(headers) == [("Content-Type", "application/json"), ("Authorization", "Bearer t"),
                                   ("X-Request-Id", "abc")]


class Upstream(BaseHTTPRequestHandler):
    """Echoes what it received: method, path, headers, body."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                             "body": body.decode()}).encode()
        self.send_response(418)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


class OneBackend:
    def __init__(self, backend: ScoringServer | None) -> None:
        self.backend = backend

    def acquire(self) -> ScoringServer | None:
        if self.backend is not None:
            self.backend.enter()
        return self.backend

    def status(self) -> dict[str, Any]:
        return {"model": "m", "version": self.backend.version if self.backend else None, "state": "test"}


@contextmanager
def running(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def front() -> Iterator[tuple[int, OneBackend]]:
    """A front on loopback before a real echoing HTTP server standing in for MLflow's scoring server."""
    with running(ThreadingHTTPServer(("127.0.0.1", 0), Upstream)) as upstream_port:
        served = OneBackend(ScoringServer("m", "7", upstream_port))
        with running(ThreadingHTTPServer(("127.0.0.1", 0), handler_class(served))) as port:
            yield port, served


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_the_front_passes_method_path_headers_and_body_on_and_the_answer_back(front: tuple[int, OneBackend]) -> None:
    port, served = front
    status, headers, body = request(port, "POST", "/invocations?x=1", b'{"a": 1}',
                                    {"Content-Type": "application/json", "X-Request-Id": "abc", "Connection": "close"})
    echoed = json.loads(body)
    assert status == 418 and headers["X-Upstream"] == "yes"
    assert (echoed["method"], echoed["path"], echoed["body"]) == ("POST", "/invocations?x=1", '{"a": 1}')
    assert echoed["headers"]["Content-Type"] == "application/json" and echoed["headers"]["X-Request-Id"] == "abc"
    assert "Connection" not in echoed["headers"]
    assert served.backend is not None and served.backend.in_flight == 0


def test_the_front_answers_which_version_it_serves(front: tuple[int, OneBackend]) -> None:
    status, _, body = request(front[0], "GET", "/served-version")
    assert status == 200 and json.loads(body)["version"] == "7"


def test_with_nothing_served_the_front_answers_503(front: tuple[int, OneBackend]) -> None:
    port, served = front
    served.backend = None
    status, _, body = request(port, "POST", "/invocations", b"{}", {"Content-Type": "application/json"})
    assert status == 503 and json.loads(body)["error_code"] == "TEMPORARILY_UNAVAILABLE"


class Status(BaseHTTPRequestHandler):
    """A /served-version that reports v1, then v2 from its third answer on."""

    answered = 0

    def do_GET(self) -> None:
        type(self).answered += 1
        version = "2" if type(self).answered >= 3 else "1"
        body = json.dumps({"model": "m", "version": version, "since": "t", "state": "x",
                           "last_failure": None}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_the_rollout_wait_returns_once_the_server_serves_the_version() -> None:
    with running(ThreadingHTTPServer(("127.0.0.1", 0), Status)) as port:
        check = wait_until_served(f"http://127.0.0.1:{port}", model="m", version="2", timeout_s=10, poll_s=0.05)
    assert check.served and check.detail == "serves v2 since t"


def test_the_rollout_wait_reports_an_unreachable_server_after_its_timeout() -> None:
    check = wait_until_served(f"http://127.0.0.1:{free_port()}", model="m", version="2", timeout_s=0.2, poll_s=0.05)
    assert not check.served and check.detail.startswith("unreachable") and check.detail.endswith("after 0.2 s")


def test_the_rollout_summary_names_what_each_server_serves() -> None:
    outcome = RolloutOutcome(model_name="m", alias="champion", requested="2", version="2", action="rollout",
                             reason="r", triggered_by="t", served={"http://model-server:5001": "serves v2 since t"})
    assert "- model server `http://model-server:5001`: serves v2 since t" in summary_markdown(outcome)


def test_cyclegan_serve_refuses_a_bad_setting_before_starting_anything() -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    done = CliRunner().invoke(app, ["serve", "--model", "m", "--poll-s", "0"])
    assert done.exit_code == 4 and "poll_s" in done.output, done.output
