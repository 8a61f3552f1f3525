"""The real Prefect deployment path, shared by the e2e modules (one server and one worker for tests/e2e,
stopped after its last test so they do not load the rest of the suite):

- ``prefect_server``: a `prefect server start` process on loopback; the environment that points at it,
- ``worker``: prefect.yaml deployed (`prefect deploy --all`) and a process worker serving its pool with
  the environment a production worker has (S3, MLflow, Ray cluster). The rollout's reconcile schedule
  is paused after the deploy, so only the runs a test starts or triggers happen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _stop_process_group, free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def prefect(env: dict[str, str], *args: str, timeout: float = 300, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if ok:
        assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def api_client(env: dict[str, str]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return get_client(sync_client=True)


@pytest.fixture(scope="package")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server on loopback; returns the environment that points clients at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    with open(home / "server.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout_s=180, process=process)
        yield env
    finally:
        _stop_process_group(process)


@pytest.fixture(scope="package")
def worker(prefect_server, ray_head, s3_server, mlflow_server, tmp_path_factory) -> Iterator[dict[str, str]]:
    """prefect.yaml deployed (`prefect deploy --all`) and a process worker serving its pool, with the
    environment a production worker has; yields that environment."""
    env = {**prefect_server, **ray_head, "PREFECT_HOME": prefect_server["PREFECT_HOME"],
           "MLFLOW_TRACKING_URI": mlflow_server,
           "AWS_ENDPOINT_URL": s3_server,
           **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
           # the worker looks for scheduled runs every second (Prefect's default: 10 s), so a run a test
           # starts or triggers begins at once
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    prefect(env, "work-pool", "create", "cyclegan-pool", "--type", "process")
    prefect(env, "deploy", "--all")
    pause_rollout_schedule(env)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cyclegan-pool"], env=env,
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {**env, "WORKER_LOG": str(log_path)}
    finally:
        _stop_process_group(process)


def pause_rollout_schedule(env: dict[str, str]) -> None:
    """Pause rollout-champion/on-promotion's reconcile schedule (its future runs are deleted with it)."""
    with api_client(env) as client:
        deployment = client.read_deployment_by_name("rollout-champion/on-promotion")
        for schedule in deployment.schedules:
            client.update_deployment_schedule(deployment.id, schedule.id, active=False)
