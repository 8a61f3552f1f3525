"""The deployment path for real, with every service external to the flow process:

- Prefect: a `prefect server start` process; `prefect deploy --all` from prefect.yaml; a process worker;
  `prefect deployment run train-cyclegan/manual` (PREFECT_API_URL),
- S3: moto's server (AWS_ENDPOINT_URL), MLflow: a `mlflow server` process (MLFLOW_TRACKING_URI),
- Ray: a cluster from `ray start --head` (RAY_ADDRESS).

This is how the production stack of infra/ is driven, with the same environment variables. One worker
serves the module's tests: the nightly schedule is deployed paused, a run without a tracking server
is refused before ingest, a manual run trains and its per-epoch lines and progress artifact reach the
Prefect API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def prefect(env: dict[str, str], *args: str, timeout: float = 300, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if ok:
        assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def worker(prefect_server, ray_head, s3_server, mlflow_server, tmp_path_factory) -> Iterator[dict[str, str]]:
    """prefect.yaml deployed (`prefect deploy --all`) and a process worker serving its pool, with the
    environment a production worker has; yields that environment."""
    env = {**prefect_server, **ray_head, "PREFECT_HOME": prefect_server["PREFECT_HOME"],
           "MLFLOW_TRACKING_URI": mlflow_server,
           "AWS_ENDPOINT_URL": s3_server,
           **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
    prefect(env, "work-pool", "create", "cyclegan-pool", "--type", "process")
    prefect(env, "deploy", "--all")
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cyclegan-pool"], env=env,
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {**env, "WORKER_LOG": str(log_path)}
    finally:
        _stop_process_group(process)


def tiny_config(s3_bucket: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "dataset_uri": f"s3://{s3_bucket}/synth",
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "outputs"),
        "model": {"generator": "resnet_6blocks", "ngf": 8, "ndf": 8},
        "train": {"n_epochs": 2, "n_epochs_decay": 0, "batch_size": 4, "pool_size": 10},
        "data": {"preprocess": "none", "load_size": 32, "crop_size": 32, "num_workers": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "run": {"run_name": "deployment-test", "storage_path": str(tmp_path / "runs"), "max_failures": 0},
        "eval": {"max_images": 4},
        "registry": {"model_name": "deployed-cyclegan", "experiment": "deployment-test"},
    }


def run_manual(env: dict[str, str], config: dict[str, Any], *extra: str) -> tuple[str, str]:
    """`prefect deployment run train-cyclegan/manual --watch`; returns (flow run id, CLI output)."""
    run = prefect(env, "deployment", "run", "train-cyclegan/manual", "--params", json.dumps({"config": config}),
                  *extra, "--watch", "--watch-timeout", "600", timeout=660, ok=False)
    found = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
    assert found, run.stdout + run.stderr
    return found.group(1), run.stdout + run.stderr + Path(env["WORKER_LOG"]).read_text()[-5000:]


def api_client(env: dict[str, str]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return get_client(sync_client=True)


def flow_run_logs(env: dict[str, str], flow_run_id: str) -> list[Any]:
    """Every log record of the flow run (its task runs' included) that the Prefect API holds."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list[Any] = []
    with api_client(env) as client:
        while page := client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                       limit=200, offset=len(logs)):
            logs += page
    return logs


def test_nightly_is_deployed_with_its_schedule_paused_and_one_command_resumes_it(worker):
    def nightly_active() -> list[bool]:
        with api_client(worker) as client:
            return [s.active for s in client.read_deployment_by_name("train-cyclegan/nightly").schedules]

    assert nightly_active() == [False]
    prefect(worker, "deployment", "schedule", "resume", "--all")  # the README's command
    assert nightly_active() == [True]
    prefect(worker, "deployment", "schedule", "pause", "--all")
    assert nightly_active() == [False]


def test_a_deployment_run_without_a_tracking_server_fails_before_ingest(
    worker, s3_bucket, synthetic_dataset, tmp_path
):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from pipelines.ingest import upload_folder

    upload_folder(synthetic_dataset, f"s3://{s3_bucket}/synth")
    flow_run_id, output = run_manual(worker, tiny_config(s3_bucket, tmp_path),
                                     "--job-variable", 'env={"MLFLOW_TRACKING_URI": ""}')
    with api_client(worker) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert flow_run.state.is_failed(), output
    assert "MLFLOW_TRACKING_URI is not set" in flow_run.state.message
    assert task_runs == []  # not even ingest
    assert not (tmp_path / "cache").exists()


def test_manual_deployment_trains_on_a_process_worker_and_reports_each_epoch_to_prefect(
    worker, s3_bucket, synthetic_dataset, mlflow_server, tmp_path
):
    from mlflow import MlflowClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipelines.ingest import upload_folder

    upload_folder(synthetic_dataset, f"s3://{s3_bucket}/synth")
    config = tiny_config(s3_bucket, tmp_path)
    flow_run_id, output = run_manual(worker, config)
    with api_client(worker) as client:
        assert client.read_flow_run(flow_run_id).state.is_completed(), output
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    mlflow_client = MlflowClient(tracking_uri=mlflow_server)
    champion = mlflow_client.get_model_version_by_alias("deployed-cyclegan", "champion")
    assert champion.version == "1"
    assert champion.tags.get("dataset_version")
    # The deployment run's MLflow run names its flow run and links its UI page; the summary links back.
    run = mlflow_client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["prefect.flow_run_id"] == str(flow_run_id)
    assert run.data.tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
    (summary,) = [a for a in artifacts if a.key == "train-cyclegan-summary"]
    assert f"/runs/{champion.run_id}" in summary.data
    assert_a_rerun_skips_only_with_the_same_settings(config, mlflow_server)

    # The per-epoch lines of the driver (a Ray Train callback's thread in the flow-run process) are
    # the train task run's logs in the API, with losses, speed and the ETA of the epochs left.
    lines = [log.message for log in flow_run_logs(worker, flow_run_id) if log.name == "pipelines.train.progress"]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"], lines
    assert " G_A=" in epochs[0] and " img/s " in epochs[0] and " ETA " in epochs[0]
    assert "epoch 2/2 step" in Path(worker["WORKER_LOG"]).read_text()  # and the worker's terminal shows them

    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.key == "train-cyclegan-progress"
    assert progress.data == 100.0
    assert any(a.type == "markdown" and a.key == "train-cyclegan-summary" for a in artifacts)


def assert_a_rerun_skips_only_with_the_same_settings(config: dict[str, Any], tracking_uri: str) -> None:
    """What a re-run of train-cyclegan/manual decides from the champion the deployment run registered
    on the MLflow server: the same config skips training, a changed training setting trains."""
    from pipelines.config import PipelineConfig, resolve
    from pipelines.flows import skip_reason
    from pipelines.records import DatasetRef
    from pipelines.registry import champion_identity

    champion = champion_identity("deployed-cyclegan", tracking_uri=tracking_uri)
    assert champion is not None
    dataset = DatasetRef(uri=config["dataset_uri"], root=Path(config["cache_dir"]),
                         manifest=Path(config["cache_dir"]) / "manifest.json", version=champion[0])
    same = resolve(PipelineConfig.model_validate(config), env={})
    assert "set force=true" in skip_reason(champion, dataset, same)
    changed = resolve(PipelineConfig.model_validate({**config, "train": {**config["train"], "lr": 1e-3}}), env={})
    assert skip_reason(champion, dataset, changed) == ""
