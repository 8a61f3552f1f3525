"""The deployment path for real, with every service external to the flow process:

- Prefect: a `prefect server start` process; `prefect deploy --all` from prefect.yaml; a process worker;
  `prefect deployment run train-cyclegan/manual` (PREFECT_API_URL),
- S3: moto's server (AWS_ENDPOINT_URL), MLflow: a `mlflow server` process (MLFLOW_TRACKING_URI),
- Ray: a cluster from `ray start --head` (RAY_ADDRESS).

This is how the production stack of infra/ is driven, with the same environment variables. The server
and the worker are tests/e2e/conftest.py's, shared with the other e2e modules. Here: the nightly
schedule is deployed paused, a run without a tracking server is refused before ingest, a manual run
trains and its per-epoch lines and progress artifact reach the Prefect API.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import api_client, prefect

pytestmark = pytest.mark.slow


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
    from pipelines.flows.train import skip_reason
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
