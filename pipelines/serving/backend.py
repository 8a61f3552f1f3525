"""One version's scoring server: the real ``mlflow models serve -m models:/<name>/<version>
--env-manager local`` on a loopback port, its output relayed to this process's log, started and
stopped as a process group."""

from __future__ import annotations

import collections
import http.client
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from pipelines.local_http import stop_process_group

log = logging.getLogger(__name__)

OUTPUT_LINES_KEPT = 40


class StartFailed(RuntimeError):
    """The scoring server of a version did not answer ``/ping``; the message says why."""


def serve_command(model: str, version: str, port: int, *, workers: int = 1) -> list[str]:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    return [mlflow, "models", "serve", "-m", f"models:/{model}/{version}", "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]


def child_environment(env: Mapping[str, str], tracking_uri: str) -> dict[str, str]:
    """``env`` with the tracking URI set and this venv's bin first on PATH (MLflow execs ``uvicorn``)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}


def ping(port: int, timeout_s: float = 2.0) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class ScoringServer:
    """``start`` runs the process and waits for ``/ping``; ``in_flight`` counts the front's requests on
    it, so ``stop`` lets them finish first."""

    def __init__(self, model: str, version: str, port: int) -> None:
        self.model, self.version, self.port = model, version, port
        self.process: subprocess.Popen[bytes] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self.in_flight = 0
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"{self.model} v{self.version} (127.0.0.1:{self.port})"

    def start(self, *, tracking_uri: str, env: Mapping[str, str], timeout_s: float, workers: int = 1) -> float:
        """Start and wait until ``/ping`` answers 200; returns the seconds it took. Raises StartFailed
        (the process stopped) when it exits first or does not answer within ``timeout_s``."""
        began = time.monotonic()
        self.process = subprocess.Popen(serve_command(self.model, self.version, self.port, workers=workers),
                                        env=child_environment(env, tracking_uri), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._relay, name=f"mlflow-serve-v{self.version}", daemon=True).start()
        while time.monotonic() - began < timeout_s:
            if self.process.poll() is not None:
                time.sleep(0.2)  # the relay thread reads the last lines
                log.info("mlflow models serve of v%s, its last lines: %s", self.version, self.last_output())
                raise StartFailed(f"{self.label}: mlflow models serve exited with {self.process.returncode}: "
                                  f"{self.last_output(1)}")
            if ping(self.port):
                return time.monotonic() - began
            time.sleep(0.25)
        self.stop(drain_s=0)
        raise StartFailed(f"{self.label}: /ping did not answer within {timeout_s:.0f} s: {self.last_output()}")

    def _relay(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            log.debug("mlflow-serve v%s: %s", self.version, line)

    def last_output(self, lines: int = 8) -> str:
        tail = [line for line in self.output if line.strip()][-lines:]
        return " | ".join(tail) if tail else "(no output)"

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def stop(self, *, drain_s: float = 30.0) -> None:
        """Wait (at most ``drain_s``) for the front's requests on it to finish, then stop the group."""
        deadline = time.monotonic() + drain_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process is not None:
            stop_process_group(self.process, timeout_s=15)
