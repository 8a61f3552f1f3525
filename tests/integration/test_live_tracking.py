"""The pipeline's live MLflow run against a real `mlflow server`: opened before the work, epochs and
images logged as they come, the model registered into it (once, however many attempts), closed
FINISHED or FAILED with the reason. The flow's use of it is in tests/e2e/test_flow.py."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.records import DatasetRef
from pipelines.registry import register_model, registration_key
from pipelines.tracking.run import (
    close_run,
    log_dataset_input,
    log_epoch_metrics,
    log_image,
    node_system_metrics,
    open_pipeline_run,
    start_system_metrics,
)
from tests.integration.test_registry import export_tiny_model, make_config, make_report, make_train


@pytest.fixture()
def model_name() -> str:
    return f"live-{uuid.uuid4().hex[:6]}"


def test_the_registration_goes_into_the_live_run_which_the_pipeline_closes(
    mlflow_server: str, model_name: str, tmp_path: Path
) -> None:
    config = make_config(model_name, mlflow_server)
    train = make_train(export_tiny_model(tmp_path / "gen", seed=3), "run-live")
    dataset = DatasetRef(uri="s3://bucket/synth", root=tmp_path, manifest=tmp_path / "m.json", version="data-v1",
                         counts={"trainA": 24, "trainB": 24}, quarantined=0)
    client = MlflowClient(mlflow_server, mlflow_server)

    live, link = open_pipeline_run(config, run_name="flow-run-name", tags={"prefect.flow_run_id": "fr-1"})
    live = dataclasses.replace(live, system_metrics_interval_s=0.2)
    monitor = start_system_metrics(live)
    assert monitor is not None, "psutil is a dependency: system metrics must start"
    with node_system_metrics(live, "node-3"):  # what each training node's first worker runs
        deadline = time.monotonic() + 30
        while not {"system/cpu_utilization_percentage", "system/node-3/cpu_utilization_percentage"} <= set(
                client.get_run(live.run_id).data.metrics):
            assert time.monotonic() < deadline, "no system metric of the host and the node within 30 s"
            time.sleep(0.2)
    monitor.finish()
    assert link == f"{mlflow_server}/#/experiments/{client.get_run(live.run_id).info.experiment_id}/runs/{live.run_id}"
    log_dataset_input(live, dataset, run_name=train.run_name)
    for entry in train.history:  # what the driver's epoch listener does while training runs
        log_epoch_metrics(live, entry, int(entry["epoch"]))
    log_image(live, Image.new("RGB", (16, 8), (0, 200, 0)), "samples/AtoB", 1)
    # A run a killed registration of the same training result left RUNNING: failed, the live run kept.
    stale = client.create_run(client.get_run(live.run_id).info.experiment_id,
                              tags={"registration_key": registration_key(train)}).info.run_id

    first = register_model(config, train, make_report(20.0), live=live)
    again = register_model(config, train, make_report(20.0), live=live)  # a retried registration task

    assert first.run_id == live.run_id and (again.version, again.run_id) == (first.version, live.run_id)
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1
    assert client.get_run(stale).info.status == "FAILED"
    run = client.get_run(live.run_id)
    assert run.info.status == "RUNNING", "the pipeline, not the registration, closes its run"
    assert run.info.run_name == "run-live" and run.data.tags["prefect.flow_run_id"] == "fr-1"
    assert run.data.tags["system_metrics"] == "on"
    assert {"system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= set(run.data.metrics)
    assert run.data.tags["registered_model_version"] == f"{model_name}/{first.version}"
    assert run.data.params["train.lr"] == "0.0002" and run.data.metrics["psnr_AtoB"] == 20.0
    assert [(m.step, m.value) for m in client.get_metric_history(live.run_id, "train/G_A")] == [(1, 0.9), (2, 0.5)]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "data-v1" and json.loads(dataset_input.dataset.source)["uri"] == dataset.uri
    assert json.loads(dataset_input.dataset.profile)["trainA"] == 24
    assert len(run.outputs.model_outputs) == 1
    assert any(a.path.startswith("images/") for a in client.list_artifacts(live.run_id, "images"))

    version = client.get_model_version(model_name, first.version)
    assert version.tags["best_epoch"] == "last (2)" and "git" in version.tags["code_version"]
    assert "gate: promoted" in version.description and "`s3://bucket/synth` version `data-v1`" in version.description

    close_run(live)
    assert client.get_run(live.run_id).info.status == "FINISHED"


def test_a_failed_pipeline_run_ends_failed_with_the_reason(mlflow_server: str, model_name: str) -> None:
    live, _ = open_pipeline_run(make_config(model_name, mlflow_server), run_name="doomed", tags={})
    close_run(live, failed=RuntimeError("worker rank 0 died\ntraceback..."))
    run = MlflowClient(mlflow_server, mlflow_server).get_run(live.run_id)
    assert run.info.status == "FAILED" and run.data.tags["failed_reason"] == "RuntimeError: worker rank 0 died"
