"""Checkpoints as MLflow LoggedModels of the pipeline's run: log one, link its metrics, find it, prune it.

A checkpoint's LoggedModel is named after its epoch (``epoch-0012``), is an output of the run at that
step, carries tags saying where it came from (``CheckpointIdentity.tags``) and holds the generators as
the pyfunc the registry serves (``pyfunc.log_pyfunc``) plus the evaluation's sample grids
(``samples/<direction>.png``). Its metrics are logged into the run with its ``model_id``, the step and
the dataset, so the UI lists them on the model and compares models by them. A registered version is
created from one (source ``models:/<model_id>``, ``version_model_id``), by the pipeline or by a person.

Pruning deletes a model's artifacts and tags it ``weights_deleted`` with why; the record (tags, metrics)
stays for comparison, and its sample grids are in the run's images at its step (``samples/<direction>``,
logged by the evaluation). A model a registered version was created from is never pruned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from pipelines.registry.pyfunc import log_pyfunc
from pipelines.tracking.experiment import TAG_DATASET_VERSION, TAG_FINGERPRINT
from pipelines.tracking.run import dataset_key
from pipelines.tracking.session import global_tracking_uri

log = logging.getLogger(__name__)

# Tags of runs, versions and LoggedModels (read back by the gate, champion_identity and retries).
MODEL_TYPE = "cyclegan-generators"
SAMPLES_ARTIFACT = "samples"
TAG_EPOCH = "epoch"
TAG_STEP = "step"
TAG_CHECKPOINT = "checkpoint_uri"
TAG_RAY_RUN = "ray_run_name"
TAG_PRUNED = "weights_deleted"  # why the model's weights were deleted (absent: it has them)
SEARCH_PAGE = 100
METRIC_BATCH = 1000


@dataclass(frozen=True)
class CheckpointIdentity:
    """Where a checkpoint's generators come from: what its LoggedModel is named and tagged with."""

    epoch: int
    step: int
    checkpoint_uri: str
    fingerprint: str
    dataset_uri: str
    dataset_version: str
    ray_run_name: str

    @property
    def name(self) -> str:
        return f"epoch-{self.epoch:04d}"

    def tags(self) -> dict[str, str]:
        return {TAG_EPOCH: str(self.epoch), TAG_STEP: str(self.step), TAG_CHECKPOINT: self.checkpoint_uri,
                TAG_FINGERPRINT: self.fingerprint, "dataset_uri": self.dataset_uri,
                TAG_DATASET_VERSION: self.dataset_version, TAG_RAY_RUN: self.ray_run_name}


def create_model(client: MlflowClient, run_id: str, identity: CheckpointIdentity, *,
                 tags: Mapping[str, str] | None = None) -> LoggedModel:
    """A new, empty (PENDING) LoggedModel of run ``run_id`` for ``identity``, an output of the run at its
    epoch."""
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=identity.name, source_run_id=run_id,
                                       tags={**identity.tags(), **(tags or {})}, model_type=MODEL_TYPE)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=identity.epoch)])
    return model


def link_metrics(client: MlflowClient, run_id: str, model_id: str, metrics: Mapping[str, float], *,
                 identity: CheckpointIdentity) -> None:
    """Log ``metrics`` into the run, linked to the model, at its epoch, on its dataset version."""
    name, digest = dataset_key(identity.dataset_uri, identity.dataset_version)
    now = int(time.time() * 1000)
    records = [Metric(key, float(value), now, identity.epoch, model_id=model_id, dataset_name=name,
                      dataset_digest=digest) for key, value in sorted(metrics.items())]
    for start in range(0, len(records), METRIC_BATCH):
        client.log_batch(run_id, metrics=records[start : start + METRIC_BATCH])


def log_checkpoint_model(client: MlflowClient, run_id: str, identity: CheckpointIdentity, *,
                         generators_dir: Path | None, metrics: Mapping[str, float],
                         samples_dir: Path | None = None, tags: Mapping[str, str] | None = None,
                         missing: str = "") -> str:
    """Log one checkpoint as a LoggedModel of run ``run_id`` (see the module docstring); returns its id.
    ``generators_dir`` None: the checkpoint could not be read (``missing`` says why): its record is
    logged, tagged ``weights_deleted`` with that reason."""
    model = create_model(client, run_id, identity, tags=tags)
    try:
        link_metrics(client, run_id, model.model_id, metrics, identity=identity)
        if samples_dir is not None and any(samples_dir.glob("*.png")):
            client.log_model_artifacts(model.model_id, str(samples_dir), SAMPLES_ARTIFACT)
        if generators_dir is None:
            client.set_logged_model_tags(model.model_id, {TAG_PRUNED: missing or "its checkpoint could not be read"})
            client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        else:
            log_pyfunc(model.model_id, generators_dir, tracking_uri=client.tracking_uri)  # READY when done
    except BaseException:
        mark_failed(client, model.model_id)
        raise
    return model.model_id


def mark_failed(client: MlflowClient, model_id: str) -> None:
    try:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        log.warning("could not mark LoggedModel %s FAILED: %s", model_id, exc)


def run_models(client: MlflowClient, run_id: str, *, filter_extra: str = "") -> Iterator[LoggedModel]:
    """The LoggedModels of run ``run_id`` (optionally narrowed by a filter clause)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    filter_string = f"source_run_id = '{run_id}'" + (f" AND {filter_extra}" if filter_extra else "")
    token = None
    while True:
        page = client.search_logged_models([experiment_id], filter_string=filter_string, max_results=SEARCH_PAGE,
                                           page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def has_weights(model: LoggedModel) -> bool:
    return model.status == LoggedModelStatus.READY and TAG_PRUNED not in model.tags


def find_checkpoint_model(
    client: MlflowClient, run_id: str, checkpoint_uri: str, fingerprint: str
) -> LoggedModel | None:
    """The newest LoggedModel of run ``run_id`` holding the generators of ``checkpoint_uri`` (trained
    with ``fingerprint``); None when there is none with its weights."""
    found = [model for model in run_models(client, run_id, filter_extra=f"tags.{TAG_CHECKPOINT} = '{checkpoint_uri}'")
             if model.tags.get(TAG_FINGERPRINT) == fingerprint and has_weights(model)]
    return max(found, key=lambda model: model.creation_timestamp, default=None)


def version_model_id(version: ModelVersion) -> str | None:
    """The LoggedModel a registered version was created from: its ``model_id`` where the registry
    keeps it, else the id in its ``models:/<model_id>`` source (MLflow's SQL registry keeps only that)."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    rest = source.removeprefix("models:/")
    return rest if rest != source and rest.startswith("m-") and "/" not in rest else None


def registered_model_ids(client: MlflowClient, run_id: str) -> set[str]:
    """Ids of the LoggedModels that registered versions of run ``run_id`` were created from."""
    versions = client.search_model_versions(f"run_id = '{run_id}'", max_results=SEARCH_PAGE)
    return {model_id for version in versions if (model_id := version_model_id(version))}


def delete_weights(client: MlflowClient, model: LoggedModel, reason: str) -> None:
    """Delete the model's artifacts (its sample grids stay in the run's images at its step) and tag it
    ``weights_deleted`` with ``reason``; its record (tags, metrics) stays."""
    with global_tracking_uri(client.tracking_uri):
        repository = get_artifact_repository(model.artifact_location, tracking_uri=client.tracking_uri)
        for entry in repository.list_artifacts():
            repository.delete_artifacts(entry.path)
    client.set_logged_model_tags(model.model_id, {TAG_PRUNED: reason})
    log.info("deleted the weights of LoggedModel %s (%s): %s", model.name, model.model_id, reason)
