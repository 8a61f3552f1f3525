"""Which data made which model, as Prefect assets of the train-cyclegan flow (their keys are known only
at run time, so the flow builds its materializing tasks per run).

- the dataset: its S3 prefix, materialized by ``ingest``; each materialization records the version it
  verified (and the per-split counts) as metadata;
- the training run: its Ray Train run folder (``run.storage_path/<Ray run name>``, the name carrying the
  dataset version and the training fingerprint), materialized by ``train``, depending on the dataset;
- the registered model version (``mlflow://<tracking server>/models/<name>/<version>``), materialized
  once ``register`` created it, depending on the training run.

A cached stage materializes nothing (Prefect emits no event for a Cached state): the training run's
asset then keeps its earlier materialization.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from prefect.assets import Asset, AssetProperties
from prefect.context import AssetContext
from prefect.types.names import RESTRICTED_ASSET_CHARACTERS

from pipelines.records import DatasetRef, ModelVersionRef


def asset_key(uri: str) -> str:
    """``uri`` as a Prefect asset key: the characters Prefect refuses in a key become ``_``."""
    return "".join("_" if char in RESTRICTED_ASSET_CHARACTERS else char for char in uri)


def dataset_asset(dataset_uri: str) -> Asset:
    prefix = dataset_uri.rstrip("/")
    return Asset(key=asset_key(prefix), properties=AssetProperties(
        name=f"dataset {prefix}", description="unpaired image dataset (trainA/ trainB/ testA/ testB/) ingested by "
        "train-cyclegan; each materialization records the version it verified"))


def training_run_asset(storage_path: str, run_name: str, *, url: str | None = None) -> Asset:
    """The Ray Train run ``run_name`` in ``storage_path`` (an s3:// prefix or an absolute local path)."""
    folder = f"{storage_path.rstrip('/')}/{run_name}"
    key = folder if "://" in folder else f"file://{folder}"
    return Asset(key=asset_key(key), properties=AssetProperties(
        name=f"training run {run_name}", url=url,
        description="Ray Train run of train-cyclegan: its checkpoints (each evaluated one is an MLflow LoggedModel)"))


def model_version_asset(tracking_uri: str, name: str, version: str, *, url: str | None = None) -> Asset:
    """Version ``version`` of the registered model ``name`` in the registry at ``tracking_uri``."""
    parsed = urlparse(tracking_uri)
    registry = parsed.netloc if parsed.scheme in ("http", "https") else "local"
    return Asset(key=asset_key(f"mlflow://{registry}/models/{name}/{version}"), properties=AssetProperties(
        name=f"{name} v{version}", url=url, description=f"registered MLflow model version ({tracking_uri})"))


def dataset_metadata(dataset: DatasetRef) -> dict[str, Any]:
    return {"version": dataset.version, "counts": dict(dataset.counts), "quarantined": dataset.quarantined}


def model_metadata(model: ModelVersionRef) -> dict[str, Any]:
    return {"version": model.version, "run_id": model.run_id, "aliases": list(model.aliases),
            "promoted": model.promoted, "gate": model.reason}


def record_metadata(asset: Asset, metadata: dict[str, Any]) -> None:
    """Add ``metadata`` to this task run's materialization of ``asset`` (nothing outside a
    materializing task run, e.g. a stage called as a plain function)."""
    context = AssetContext.get()
    if context is not None and asset in context.downstream_assets:
        context.add_asset_metadata(asset.key, metadata)
