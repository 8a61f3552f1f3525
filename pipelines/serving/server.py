"""``cyclegan serve``: the front on ``host:port`` and the served version that follows the rollout.

A poll thread reads ``rollout.<alias>.version`` and the alias every ``poll_s`` seconds; when the wanted
version (``switch.wanted_version``) changes it starts that version's scoring server on a new loopback
port, waits for its ``/ping``, makes the front send new requests to it, then stops the old server once
the requests it still holds are answered. A version that fails to start leaves the old one serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

from pydantic import Field

from cyclegan_core.config import StrictModel
from pipelines.embedded import free_port
from pipelines.serving.backend import ScoringServer, StartFailed
from pipelines.serving.front import handler_class
from pipelines.serving.switch import plan_switch, wanted_version

log = logging.getLogger(__name__)


class ServeSettings(StrictModel):
    """What ``cyclegan serve`` serves and where (resolved once at the CLI)."""

    model: str = Field(min_length=1, description="registered model")
    alias: str = Field("champion", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(5001, ge=0, le=65535)
    tracking_uri: str = Field(min_length=1)
    poll_s: float = Field(5.0, gt=0, description="how often the rollout tag is read")
    start_timeout_s: float = Field(300.0, gt=0, description="how long a version's server may take to answer /ping")
    retry_after_s: float = Field(60.0, ge=0, description="wait before starting a version that failed again")
    workers: int = Field(1, ge=1, description="workers of each mlflow models serve")


class ModelServer:
    """The served version and the switch; ``acquire`` is what the front calls per request."""

    def __init__(self, settings: ServeSettings, env: Mapping[str, str]) -> None:
        from pipelines.registry.session import mlflow_client

        self.settings = settings
        self.env = dict(env)
        self.client = mlflow_client(settings.tracking_uri)
        self.current: ScoringServer | None = None
        self.starting: ScoringServer | None = None
        self.since: str | None = None
        self.failed_at: dict[str, float] = {}
        self.last_failure: dict[str, str] | None = None
        self.state = "starting: reading the registry"
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def acquire(self) -> ScoringServer | None:
        """The backend a request goes to, counted in flight (the caller calls ``leave``)."""
        with self._lock:
            if self.current is not None:
                self.current.enter()
            return self.current

    def status(self) -> dict[str, Any]:
        current = self.current
        return {"model": self.settings.model, "alias": self.settings.alias,
                "version": current.version if current else None, "since": self.since, "state": self.state,
                "last_failure": self.last_failure}

    def wanted(self) -> str | None:
        from pipelines.promotion.state import rollout_tag

        registered = self.client.get_registered_model(self.settings.model)
        alias_version = registered.aliases.get(self.settings.alias)
        return wanted_version(rolled_out=registered.tags.get(rollout_tag(self.settings.alias)),
                              alias_version=None if alias_version is None else str(alias_version))

    def poll_once(self) -> None:
        """Read the wanted version and switch to it when the plan says so."""
        try:
            wanted = self.wanted()
        except Exception as exc:  # noqa: BLE001 - MLflow down or the model missing: keep serving, retry
            state = f"cannot read {self.settings.model} from {self.settings.tracking_uri}: {type(exc).__name__}: {exc}"
            if state != self.state:  # once per change, not every poll
                log.warning("%s; v%s stays served, retrying every %g s", state,
                            self.current.version if self.current else "-", self.settings.poll_s)
            self.state = state
            return
        serving = self.current.version if self.current else None
        plan = plan_switch(serving=serving, wanted=wanted, failed_at=self.failed_at, now=time.monotonic(),
                           retry_after_s=self.settings.retry_after_s)
        if plan.action == "start" and plan.version is not None:
            self.switch_to(plan.version)
        elif plan.action == "keep":
            self.state = plan.reason
        elif plan.action == "wait" and self.state != plan.reason:
            self.state = plan.reason
            log.info("%s", plan.reason)

    def switch_to(self, version: str) -> None:
        old = self.current
        where = f"{self.settings.model} v{old.version if old else '-'} -> v{version}"
        log.info("switching %s: starting the scoring server of v%s", where, version)
        backend = self.starting = ScoringServer(self.settings.model, version, free_port())
        try:
            took = backend.start(tracking_uri=self.settings.tracking_uri, env=self.env,
                                 timeout_s=self.settings.start_timeout_s, workers=self.settings.workers)
        except StartFailed as exc:
            self.failed_at[version] = time.monotonic()
            self.last_failure = {"version": version, "reason": str(exc),
                                 "at": datetime.now(UTC).isoformat(timespec="seconds")}
            self.state = f"v{version} failed to start; {'v' + old.version if old else 'nothing'} stays served"
            log.error("switch %s failed, %s: %s", where, self.state.split("; ", 1)[1], exc)
            return
        finally:
            self.starting = None
        if self._stop.is_set():  # closed while it started
            backend.stop(drain_s=0)
            return
        with self._lock:
            self.current, self.since = backend, datetime.now(UTC).isoformat(timespec="seconds")
        self.failed_at.pop(version, None)
        self.state = f"serving v{version}"
        log.info("switched %s: the new server took %.1f s to start", where, took)
        if old is not None:
            old.stop()
            log.info("stopped the scoring server of v%s", old.version)

    def run_polls(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.settings.poll_s)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            current, self.current = self.current, None
        for backend in (current, self.starting):
            if backend is not None:
                backend.stop(drain_s=5)


def serve(settings: ServeSettings, env: Mapping[str, str] | None = None) -> None:
    """Run the front and the poll loop until interrupted (SIGINT/SIGTERM through KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a container's stop: close the backends too
    model_server = ModelServer(settings, os.environ if env is None else env)
    front = ThreadingHTTPServer((settings.host, settings.port), handler_class(model_server))
    front.daemon_threads = True
    host, port = front.server_address[:2]
    log.info("serving %s@%s (following rollout.%s.version, polled every %g s) on http://%s:%s",
             settings.model, settings.alias, settings.alias, settings.poll_s, host, port)
    polls = threading.Thread(target=model_server.run_polls, name="serve-poll", daemon=True)
    polls.start()
    try:
        front.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        front.server_close()
        model_server.close()
        log.info("model server stopped")
