"""The live-tracking helpers without a server: records, tags, the dataset entity, outage tolerance."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from pipelines.clients.embedded import free_port
from pipelines.records import DatasetRef
from pipelines.tracking.run import (
    TrackingRun,
    dataset_entity,
    epoch_metric_records,
    epoch_step,
    failure_reason,
    flow_run_tags,
    log_epoch_metrics,
    log_image,
)

DATASET = DatasetRef(uri="s3://bucket/horse2zebra/", root=Path("/data"), manifest=Path("/data/m.json"),
                     version="f" * 64, counts={"trainA": 3, "trainB": 4}, quarantined=1)


def test_epoch_metrics_are_train_prefixed_at_the_given_step() -> None:
    records = epoch_metric_records({"epoch": 2.0, "loss_G": 1.5, "lr": 2e-4}, 2, timestamp_ms=7)
    assert [(m.key, m.value, m.step, m.timestamp) for m in records] == [
        ("train/loss_G", 1.5, 2, 7), ("train/lr", 2e-4, 2, 7)]


def test_epoch_step_counts_a_partial_epoch_as_started() -> None:
    assert epoch_step({"epoch": 3.0}) == 3
    assert epoch_step({"epoch": 0.5}) == 1


def test_flow_run_tags_link_the_prefect_ui_when_known() -> None:
    assert flow_run_tags(None, "http://ui") == {}
    assert flow_run_tags("abc", None) == {"prefect.flow_run_id": "abc"}
    assert flow_run_tags("abc", "http://ui/runs/flow-run/abc")["prefect.flow_run_url"] == \
        "http://ui/runs/flow-run/abc"


def test_dataset_entity_carries_uri_version_and_counts() -> None:
    entity = dataset_entity(DATASET)
    assert entity.name == "horse2zebra@ffffffffffff" and len(entity.digest) <= 36
    assert json.loads(entity.source) == {"uri": "s3://bucket/horse2zebra/"}
    assert json.loads(entity.profile) == {"version": "f" * 64, "quarantined": 1, "trainA": 3, "trainB": 4}


def test_failure_reason_is_the_type_and_first_line() -> None:
    assert failure_reason(RuntimeError("disk full\nmore detail")) == "RuntimeError: disk full"
    assert failure_reason(KeyboardInterrupt()).startswith("interrupted (KeyboardInterrupt): the flow run was cancelled")


def test_without_a_run_nothing_is_logged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    calls: list[str] = []
    for method in ("log_image", "log_batch"):
        monkeypatch.setattr(MlflowClient, method, lambda *args, _name=method, **kwargs: calls.append(_name))
    monkeypatch.chdir(tmp_path)  # MLflow's default store would create ./mlruns
    with caplog.at_level(logging.DEBUG, logger="pipelines.tracking.run"):
        log_image(None, Image.new("RGB", (4, 4)), "samples/AtoB", 1)
        log_epoch_metrics(None, {"loss_G": 1.0}, 1)
    assert calls == [] and list(tmp_path.iterdir()) == [] and caplog.records == []


def test_a_tracking_outage_is_a_warning_not_an_error(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = TrackingRun(tracking_uri=f"http://127.0.0.1:{free_port()}", run_id="0" * 32)
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking.run"):
        log_epoch_metrics(run, {"loss_G": 1.0}, 1)
        log_image(run, Image.new("RGB", (4, 4)), "samples/AtoB", 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(run.run_id in w and run.tracking_uri in w for w in warnings)


def test_a_relative_sqlite_store_is_made_absolute_for_other_processes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.tracking.run import shared_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert shared_tracking_uri("sqlite:///mlruns.db") == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert shared_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert shared_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
