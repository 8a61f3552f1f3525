"""The promotion receiver as the process the containers run: it serves until SIGTERM, then shuts down
cleanly (exit 0, "receiver stopped"), with both entries (`cyclegan receiver`, `python -m`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("cyclegan"))


@pytest.mark.parametrize("entry", ["cli", "module"])
def test_the_receiver_serves_until_sigterm_then_stops_cleanly(entry: str) -> None:
    port = free_port()
    env = {**os.environ, "CYCLEGAN_WEBHOOK_SECRET": "process-test-secret", "CYCLEGAN_PROMOTION_MODELS": "cyclegan",
           "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # no Prefect there
           "CYCLEGAN_RECEIVER_PORT": str(port)}
    # the containers' entry reconciles on start: Prefect is not there, which it logs and goes on
    command = [CLI, "receiver", "--no-reconcile"] if entry == "cli" else [sys.executable, "-m",
                                                                          "pipelines.promotion.receiver"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=60, process=process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.status == 200 and answer.headers["Server"] == "cyclegan-promotion-receiver"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, output
    assert "receiver stopped" in output and "Traceback" not in output
