"""The deployment path for real, with every service external to the flow process:

- Prefect: a `prefect server start` process; `prefect deploy --all` from prefect.yaml; a process worker;
  `prefect deployment run train-cyclegan/manual` (PREFECT_API_URL),
- S3: moto's server (AWS_ENDPOINT_URL), MLflow: a `mlflow server` process (MLFLOW_TRACKING_URI),
- Ray: a cluster from `ray start --head` (RAY_ADDRESS).

This is how the production stack of infra/ is driven, with the same environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _stop_process_group, free_port, wait_http

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
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


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_manual_deployment_runs_on_a_process_worker_against_external_services(
    prefect_server, ray_head, s3_server, s3_bucket, mlflow_server, synthetic_dataset, tmp_path
):
    from mlflow import MlflowClient

    from pipelines.ingest import upload_folder

    upload_folder(synthetic_dataset, f"s3://{s3_bucket}/synth")
    env = {**prefect_server, **ray_head, "PREFECT_HOME": prefect_server["PREFECT_HOME"],
           "MLFLOW_TRACKING_URI": mlflow_server,
           "AWS_ENDPOINT_URL": s3_server,
           **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
    prefect(env, "work-pool", "create", "cyclegan-pool", "--type", "process")
    prefect(env, "deploy", "--all")

    with open(tmp_path / "worker.log", "wb") as worker_log:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cyclegan-pool"], env=env,
                                  cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    config = {
        "dataset_uri": f"s3://{s3_bucket}/synth",
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "outputs"),
        "model": {"generator": "resnet_6blocks", "ngf": 8, "ndf": 8},
        "train": {"n_epochs": 1, "n_epochs_decay": 0, "batch_size": 4, "pool_size": 10},
        "data": {"preprocess": "none", "load_size": 32, "crop_size": 32, "num_workers": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "run": {"run_name": "deployment-test", "storage_path": str(tmp_path / "runs"), "max_failures": 0},
        "eval": {"max_images": 4},
        "registry": {"model_name": "deployed-cyclegan", "experiment": "deployment-test"},
    }
    try:
        run = prefect(env, "deployment", "run", "train-cyclegan/manual", "--params", json.dumps({"config": config}),
                      "--watch", "--watch-timeout", "600", timeout=660)
    finally:
        _stop_process_group(worker)
    assert "Completed" in run.stdout, run.stdout + (tmp_path / "worker.log").read_text()[-5000:]

    champion = MlflowClient(tracking_uri=mlflow_server).get_model_version_by_alias("deployed-cyclegan", "champion")
    assert champion.version == "1"
    assert champion.tags.get("dataset_version")
