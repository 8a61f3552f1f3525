"""Live MLflow tracking of one pipeline run: the run that opens when the run starts and closes with it.

``TrackingRun`` names the run (tracking URI + run id); it is what travels to the driver's epoch listener
and to Ray workers (``WorkerArgs.tracking``). ``log_epoch_metrics`` and ``log_image`` never
raise: a tracking outage costs a warning, never the training. ``open_run`` / ``close_run`` and the
dataset input are the flow's bookkeeping (``pipelines.flows.train``); registration then logs the model into
the same run (``pipelines.registry``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow is imported where it is used: a Ray worker that only trains never loads it
    from mlflow.entities import Dataset, Metric
    from mlflow.tracking import MlflowClient
    from PIL.Image import Image

    from pipelines.config import ResolvedConfig
    from pipelines.records import DatasetRef

log = logging.getLogger(__name__)

METRIC_PREFIX = "train/"  # per-epoch training metrics, by epoch (what the registration back-fills too)
TAG_STATUS_REASON = "failed_reason"  # why a run ended FAILED (the registry's stale-run tag too)
TAG_SKIPPED = "training_skipped"
TAG_SYSTEM_METRICS = "system_metrics"
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
MAX_NOTE_LENGTH = 8000  # MLflow's run tag value limit
DATASET_CONTEXT = "train"
MAX_TAG_LENGTH = 5000  # MLflow's run tag value limit is 8000; keep reasons well inside it
PARAM_BATCH = 100  # MLflow's log_batch accepts at most 100 params per call
MAX_DIGEST = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE
SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's default sampling interval of system metrics


@dataclass(frozen=True)
class TrackingRun:
    """An open MLflow run: where it lives, its id, and how often its system metrics are sampled."""

    tracking_uri: str
    run_id: str
    system_metrics_interval_s: float = SYSTEM_METRICS_INTERVAL_S


def _client(run: TrackingRun) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=run.tracking_uri, registry_uri=run.tracking_uri)


def log_image(run: TrackingRun | None, image: Image, key: str, step: int) -> None:
    """Log ``image`` as the MLflow image ``key`` at ``step`` (the UI's step slider); no-op without a
    run; a tracking failure is a warning."""
    if run is None:
        return
    try:
        _client(run).log_image(run.run_id, image, key=key, step=step, synchronous=True)
    except Exception as exc:  # noqa: BLE001 - a picture of training must never stop it
        log.warning("could not log image %r (step %d) to MLflow run %s at %s: %s", key, step, run.run_id,
                    run.tracking_uri, exc)


def epoch_metric_records(metrics: Mapping[str, float], step: int, *, timestamp_ms: int) -> list[Metric]:
    """One epoch's metrics as MLflow metrics ``train/<name>`` at ``step`` (``epoch`` itself is the step)."""
    from mlflow.entities import Metric

    return [Metric(f"{METRIC_PREFIX}{name}", float(value), timestamp_ms, step)
            for name, value in sorted(metrics.items()) if name != "epoch"]


def log_epoch_metrics(run: TrackingRun | None, metrics: dict[str, float], step: int) -> None:
    """Log one epoch's metrics to the run at ``step``; no-op without a run; a failure is a warning."""
    if run is None:
        return
    try:
        _client(run).log_batch(run.run_id, metrics=epoch_metric_records(metrics, step,
                                                                          timestamp_ms=int(time.time() * 1000)))
    except Exception as exc:  # noqa: BLE001 - live curves must never stop training
        log.warning("could not log epoch %d metrics to MLflow run %s at %s: %s", step, run.run_id,
                    run.tracking_uri, exc)


class EpochMetricsLogger:
    """An ``epoch_listener`` (``pipelines.train.progress``) that logs each epoch's record to ``run``
    as it arrives on the driver, at step = completed epochs."""

    def __init__(self, run: TrackingRun | None) -> None:
        self.run = run

    def __call__(self, metrics: dict[str, float]) -> None:
        log_epoch_metrics(self.run, metrics, epoch_step(metrics))


def epoch_step(metrics: Mapping[str, float]) -> int:
    """The step of an epoch's record: its completed epochs (a partial epoch counts as started)."""
    progress = float(metrics.get("epoch", 0.0))
    whole = int(progress)
    return whole if whole == progress else whole + 1


def flow_run_tags(flow_run_id: str | None, url: str | None) -> dict[str, str]:
    """Tags that link the MLflow run to its Prefect flow run (id; its UI page when known)."""
    if not flow_run_id:
        return {}
    return {"prefect.flow_run_id": flow_run_id, **({"prefect.flow_run_url": url} if url else {})}


def shared_tracking_uri(uri: str) -> str:
    """``uri`` as another process sees it: a relative SQLite path (the embedded default) made absolute,
    so a Ray worker in another working folder writes into the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def run_link(run: TrackingRun, experiment_id: str) -> str:
    """Where a person opens the run: its UI page on an HTTP server, else how to browse the store."""
    if run.tracking_uri.startswith("http"):
        return f"{run.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run.run_id}"
    return f"run {run.run_id} in {run.tracking_uri} (browse with `mlflow ui --backend-store-uri {run.tracking_uri}`)"


def dataset_key(uri: str, version: str) -> tuple[str, str]:
    """(name, digest) of a dataset version as MLflow records it: the run's dataset input and the
    ``dataset_name`` / ``dataset_digest`` of metrics computed on it."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
    return f"{name}@{version[:12]}", version[:MAX_DIGEST]


def dataset_entity(dataset: DatasetRef) -> Dataset:
    """The ingested dataset as an MLflow dataset: its S3 URI as source, its version as digest and name
    suffix, its per-split counts (and quarantined objects) as profile."""
    from mlflow.entities import Dataset

    profile = {"version": dataset.version, "quarantined": dataset.quarantined, **dict(sorted(dataset.counts.items()))}
    name, digest = dataset_key(dataset.uri, dataset.version)
    return Dataset(name=name, digest=digest, source_type="s3", source=json.dumps({"uri": dataset.uri}),
                   profile=json.dumps(profile))


def log_dataset_input(run: TrackingRun, dataset: DatasetRef, *, run_name: str) -> None:
    """Record the dataset as the run's training input (MLflow's Datasets column), tag its URI and
    version, and name the run ``run_name`` (the Ray run's name, known once the version is)."""
    from mlflow.entities import DatasetInput, InputTag, RunTag

    from pipelines.tracking.session import with_mlflow_retries

    client = _client(run)

    def record() -> None:
        client.log_inputs(run.run_id, datasets=[
            DatasetInput(dataset_entity(dataset), tags=[InputTag("mlflow.data.context", DATASET_CONTEXT)])])
        client.log_batch(run.run_id, tags=[RunTag("dataset_uri", dataset.uri),
                                           RunTag("dataset_version", dataset.version)])
        client.update_run(run.run_id, name=run_name)

    with_mlflow_retries(record, what=f"logging the dataset input of MLflow run {run.run_id}", uri=run.tracking_uri)


def open_pipeline_run(config: ResolvedConfig, *, run_name: str, tags: dict[str, str]) -> tuple[TrackingRun, str]:
    """Create the pipeline's run (RUNNING) in ``config.registry.experiment`` at the config's tracking
    URI: ``tags`` plus the training fingerprint and git sha, params = the resolved config that trains
    (``config.user_config()``). Returns the run and its link. Raises RegistryError (transient) when the
    tracking server stays unreachable: before any work."""
    from mlflow.entities import Param

    from pipelines.tracking.experiment import TAG_FINGERPRINT, ensure_experiment, flatten_params, git_sha
    from pipelines.tracking.session import check_reachable, mlflow_client, with_mlflow_retries

    uri = config.services.tracking_uri
    check_reachable(uri)
    client = mlflow_client(uri)
    all_tags = {TAG_FINGERPRINT: config.fingerprint, "git_sha": git_sha(), **tags}

    def create() -> tuple[str, str]:
        experiment_id = ensure_experiment(client, config.registry.experiment, uri)
        return experiment_id, client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id

    experiment_id, run_id = with_mlflow_retries(create, what="opening the pipeline's MLflow run", uri=uri)
    params = [Param(key, value) for key, value in flatten_params(config.user_config()).items()]
    for start in range(0, len(params), PARAM_BATCH):
        with_mlflow_retries(lambda batch=params[start : start + PARAM_BATCH]: client.log_batch(run_id, params=batch),
                            what=f"logging the params of MLflow run {run_id}", uri=uri)
    run = TrackingRun(tracking_uri=shared_tracking_uri(uri), run_id=run_id,
                      system_metrics_interval_s=SYSTEM_METRICS_INTERVAL_S)
    return run, run_link(run, experiment_id)


def start_system_metrics(run: TrackingRun) -> Any | None:
    """MLflow's system metrics monitor of this process's host (CPU, memory, disk, network; NVIDIA GPUs
    through nvidia-ml-py) for the run, or None when psutil, which it needs, is missing (tagged on the run)."""
    try:
        import psutil  # noqa: F401  # MLflow's monitor needs it
    except ImportError:
        _client(run).set_tag(run.run_id, TAG_SYSTEM_METRICS, "off: psutil is not installed")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    try:
        monitor = SystemMetricsMonitor(run.run_id, sampling_interval=run.system_metrics_interval_s,
                                      tracking_uri=run.tracking_uri)
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - a missing chart must not stop the pipeline
        log.warning("MLflow system metrics are off for run %s: %s", run.run_id, exc)
        _client(run).set_tag(run.run_id, TAG_SYSTEM_METRICS, f"off: {exc}"[:MAX_TAG_LENGTH])
        return None
    _client(run).set_tag(run.run_id, TAG_SYSTEM_METRICS, "on")
    return monitor


@contextmanager
def node_system_metrics(run: TrackingRun | None, node: str) -> Iterator[None]:
    """System metrics of a training node (its GPUs included) into ``run`` as ``system/<node>/...`` while
    the block runs; a monitor that cannot start is a warning, never a failed training."""
    monitor = None
    if run is not None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run.run_id, sampling_interval=run.system_metrics_interval_s,
                                           node_id=node, tracking_uri=run.tracking_uri)
            monitor.start()
        except Exception as exc:  # noqa: BLE001 - a missing chart must not stop training
            log.warning("system metrics of %s are off for MLflow run %s: %s", node, run.run_id, exc)
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()


def failure_reason(exc: BaseException) -> str:
    """One line for the FAILED run's tag: the exception type and its first line; an interruption (not
    an ``Exception``: Prefect's TerminationSignal on cancellation, KeyboardInterrupt, SystemExit) says so."""
    first = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
    if not isinstance(exc, Exception):
        text = f"interrupted ({text}): the flow run was cancelled or its process was stopped"
    return text[:MAX_TAG_LENGTH]


def close_run(run: TrackingRun, *, failed: BaseException | None = None, skipped: str = "",
              description: str = "") -> None:
    """End the run: FAILED with ``failed``'s reason, else FINISHED (tagged with why training was
    skipped, when it was); ``description``: the run's description in the UI (``mlflow.note.content``).
    A tracking failure here is a warning: the run's own outcome matters more."""
    client = _client(run)
    try:
        if description:
            client.set_tag(run.run_id, TAG_NOTE, description[:MAX_NOTE_LENGTH])
        if failed is not None:
            client.set_tag(run.run_id, TAG_STATUS_REASON, failure_reason(failed))
        if skipped:
            client.set_tag(run.run_id, TAG_SKIPPED, skipped[:MAX_TAG_LENGTH])
        client.set_terminated(run.run_id, status="FAILED" if failed is not None else "FINISHED")
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
        log.warning("could not close MLflow run %s at %s: %s", run.run_id, run.tracking_uri, exc)
