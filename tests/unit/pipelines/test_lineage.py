"""The Prefect assets of the flow's lineage (pure): their keys and metadata; the flow's use of them is in
tests/e2e/test_flow.py."""

from __future__ import annotations

from pathlib import Path

from prefect.assets import Asset

from pipelines.flows.lineage import (
    asset_key,
    dataset_asset,
    dataset_metadata,
    model_version_asset,
    record_metadata,
    training_run_asset,
)
from pipelines.records import DatasetRef


def test_keys_are_the_places_the_things_live() -> None:
    assert dataset_asset("s3://bucket/horse2zebra/").key == "s3://bucket/horse2zebra"
    assert training_run_asset("s3://bucket/runs", "cyclegan-ab-cd").key == "s3://bucket/runs/cyclegan-ab-cd"
    assert training_run_asset("/data/runs", "cyclegan-ab-cd").key == "file:///data/runs/cyclegan-ab-cd"
    version = model_version_asset("http://mlflow:5000", "cyclegan", "3", url="http://mlflow:5000/#/models/cyclegan/versions/3")
    assert version.key == "mlflow://mlflow:5000/models/cyclegan/3" and version.properties.url.endswith("/versions/3")
    assert model_version_asset("sqlite:///mlruns.db", "cyclegan", "3").key == "mlflow://local/models/cyclegan/3"


def test_characters_prefect_refuses_in_a_key_are_replaced() -> None:
    key = asset_key("file:///my runs/a#b")
    assert key == "file:///my_runs/a_b"
    assert Asset(key=key).key == key  # Prefect accepts it
    assert training_run_asset("/my runs", "r").key == "file:///my_runs/r"


def test_metadata_outside_a_materializing_task_is_a_no_op() -> None:
    dataset = DatasetRef(
        uri="s3://b/p", root=Path("/c"), manifest=Path("/c/m.json"), version="v1", counts={"trainA": 3}
    )
    assert dataset_metadata(dataset) == {"version": "v1", "counts": {"trainA": 3}, "quarantined": 0}
    record_metadata(dataset_asset(dataset.uri), dataset_metadata(dataset))  # a plain call: nothing to record into
