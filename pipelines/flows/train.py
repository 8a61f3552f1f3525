"""The Prefect flow ``train-cyclegan``: ingest -> train -> evaluate -> register (+ promotion gate).

Thin orchestration over plain functions: the flow resolves its config once (``pipelines.config.resolve``)
and hands the ResolvedConfig to each stage's task. Tasks add what orchestration owns: retries with
backoff and jitter on transient failures only (``pipelines.retry.is_transient``), timeouts, caching of
finished stages on the run identity (dataset version + training fingerprint), the flow run's logs (the
``pipelines`` loggers' INFO lines, per-epoch progress included), a training progress artifact and the
summary artifact, and Prefect assets for the lineage (dataset -> training run -> model version,
``pipelines.flows.lineage``). A run created from a deployment refuses to start without a tracking server.
One MLflow run (``pipelines.tracking.run``) follows the whole pipeline run: opened before ingest, the
epochs logged live, each evaluated checkpoint a LoggedModel of it, the best one registered, closed
FINISHED or FAILED with the reason and the run's summary as its description.
A re-run does not redo finished work: ingest is incremental, training is cached or resumes its Ray run,
evaluation is cached on the checkpoint and registration is idempotent.
"""

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.assets import Asset, materialize
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import deployment, flow_run
from prefect.tasks import MaterializingTask
from prefect.utilities.urls import url_for

from pipelines.config import PipelineConfig, ResolvedConfig, resolve
from pipelines.flows.common import DeploymentSetupError, deployment_problem, pipeline_logs_in_run, retrying
from pipelines.flows.lineage import (
    dataset_asset,
    dataset_metadata,
    model_metadata,
    model_version_asset,
    record_metadata,
    training_run_asset,
)
from pipelines.ingest import ingest_dataset
from pipelines.records import DatasetRef, EvalReport, ModelVersionRef, PipelineOutcome, TrainResult
from pipelines.summary import (
    failed_description,
    run_description,
    running_description,
    summary_markdown,
    version_url,
)
from pipelines.tracking.run import (
    TAG_NOTE,
    EpochMetricsLogger,
    TrackingRun,
    close_run,
    failure_reason,
    flow_run_tags,
    log_dataset_input,
    open_pipeline_run,
    start_system_metrics,
)

FLOW_NAME = "train-cyclegan"
HOUR = 3600
PROGRESS_ARTIFACT_KEY = "train-cyclegan-progress"
# What a deployment run without a tracking server would do (``deployment_problem``).
UNSEEN_MODEL = "the model would be registered into a local SQLite file nobody sees"


class TrainingProgressArtifact:
    """The Prefect progress artifact of one training run: 0 when training starts, updated with every
    epoch's report (its description is the epoch's progress line), 100 when training returns."""

    def __init__(self, run_name: str) -> None:
        self.run_name = run_name
        self.artifact_id: UUID = create_progress_artifact(
            0.0, key=PROGRESS_ARTIFACT_KEY, description=f"training run `{run_name}`: starting")

    def __call__(self, metrics: dict[str, float]) -> None:
        from pipelines.train.progress import format_epoch_line, progress_percent

        update_progress_artifact(self.artifact_id, progress_percent(metrics),
                                 description=f"training run `{self.run_name}`: {format_epoch_line(metrics)}")

    def finished(self) -> None:
        try:
            update_progress_artifact(self.artifact_id, 100.0, description=f"training run `{self.run_name}`: done")
        except Exception:  # training is done; a failed display update must not make the task retry it
            logging.getLogger(__name__).warning("could not mark the progress artifact done", exc_info=True)


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def _train_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The run identity, plus where its files live: a cached TrainResult points at them (a run moved
    elsewhere misses the cache, then finds its Ray run by name and resumes it, which costs no training)."""
    config: ResolvedConfig = parameters["config"]
    dataset: DatasetRef = parameters["dataset"]
    where = _digest(config.run.storage_path, str(config.output_dir))
    return f"train-{dataset.version}-{config.fingerprint}-{where}"


def _evaluate_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: ResolvedConfig = parameters["config"]
    trained: TrainResult = parameters["trained"]
    return "evaluate-" + _digest(trained.checkpoint_uri, trained.dataset_version, config.eval.model_dump_json(),
                                 config.registry.primary_metric, config.services.inception_weights or "",
                                 str(config.output_dir))


def files_exist(result: TrainResult | EvalReport) -> bool:
    """Whether the local files a (possibly cached) stage result points at are still there."""
    if isinstance(result, TrainResult):
        return result.generators_dir.is_dir()
    return all(Path(path).is_file() for path in result.artifacts.values())


def run_cached_stage(stage: Any, *args: Any, force: bool) -> Any:
    """Run a cached stage task; a cached result whose files were deleted since is not trusted: the stage
    runs again (training then finds its finished Ray run by name and only re-exports it)."""
    result = stage.with_options(refresh_cache=force)(*args)
    if files_exist(result):
        return result
    get_run_logger().info("%s: the cached result's files are gone; running the stage again", stage.name)
    return stage.with_options(refresh_cache=True)(*args)


def ingest_stage(config: ResolvedConfig) -> DatasetRef:
    """Bring the S3 prefix into the local cache (incremental) and return the verified dataset (its
    version recorded on the dataset asset)."""
    dataset = ingest_dataset(config).dataset
    record_metadata(dataset_asset(config.dataset_uri), dataset_metadata(dataset))
    return dataset


INGEST_OPTIONS: dict[str, Any] = dict(name="ingest", timeout_seconds=2 * HOUR, cache_policy=NO_CACHE, **retrying())


def train_stage(config: ResolvedConfig, dataset: DatasetRef, live: TrackingRun | None = None) -> TrainResult:
    """Train on Ray (resumes from the run's last checkpoint if an earlier attempt died); the progress
    artifact and the live MLflow run follow the epochs."""
    from pipelines.train import train_on_ray
    from pipelines.train.progress import epoch_listener

    progress = TrainingProgressArtifact(config.ray_run_name(dataset.version))
    with epoch_listener(progress), epoch_listener(EpochMetricsLogger(live)):
        trained = train_on_ray(config, dataset, tracking=live)
    progress.finished()
    return trained


TRAIN_OPTIONS: dict[str, Any] = dict(name="train", timeout_seconds=72 * HOUR, cache_key_fn=_train_cache_key,
                                     cache_expiration=timedelta(days=30), persist_result=True, **retrying())


def materializing(stage: Callable[..., Any], options: dict[str, Any], asset: Asset, *,
                  depends_on: Sequence[Asset] = ()) -> MaterializingTask:
    """``stage`` as the task of ``options`` that materializes ``asset`` (keys are known only at run time,
    see ``pipelines.flows.lineage``), depending on the assets ``depends_on``."""
    return materialize(asset, asset_deps=list(depends_on) or None, **options)(stage)


@task(
    name="evaluate",
    timeout_seconds=4 * HOUR,
    cache_key_fn=_evaluate_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    **retrying(),
)
def evaluate_task(config: ResolvedConfig, trained: TrainResult, dataset: DatasetRef) -> EvalReport:
    """Score the trained generators on the test splits and write the sample grids."""
    from pipelines.evaluate import evaluate_model

    out_dir = config.output_dir / trained.run_name / "eval"
    return evaluate_model(trained.generators_dir, dataset, config, out_dir)


@task(name="register", timeout_seconds=HOUR, cache_policy=NO_CACHE, **retrying())
def register_task(config: ResolvedConfig, trained: TrainResult, report: EvalReport,
                  live: TrackingRun | None = None) -> ModelVersionRef:
    """Log the model and its evaluation into the live MLflow run, register a version and apply the
    promotion gate."""
    from pipelines.registry import register_model

    return register_model(config, trained, report, live=live)


def version_asset(config: ResolvedConfig, model: ModelVersionRef) -> Asset:
    uri = config.services.tracking_uri
    return model_version_asset(uri, model.name, model.version, url=version_url(uri, model))


def model_version_stage(config: ResolvedConfig, model: ModelVersionRef) -> ModelVersionRef:
    """Record the registered version as an asset (version, aliases, the gate's decision)."""
    record_metadata(version_asset(config, model), model_metadata(model))
    return model


MODEL_VERSION_OPTIONS: dict[str, Any] = {"name": "model-version", "cache_policy": NO_CACHE}


@task(name="champion-identity", cache_policy=NO_CACHE, **retrying(timeout_seconds=600))
def champion_identity_task(config: ResolvedConfig) -> tuple[str, str] | None:
    """(dataset version, training fingerprint) of the current champion, None without one."""
    from pipelines.registry import champion_identity

    return champion_identity(config.registry.model_name, tracking_uri=config.services.tracking_uri)


@flow(name=FLOW_NAME, log_prints=False, validate_parameters=True)
def train_cyclegan(config: PipelineConfig) -> PipelineOutcome:
    """Ingest an unpaired dataset from S3, train CycleGAN on Ray, evaluate, register in MLflow.

    Training is skipped when the champion was trained on the same dataset version with the same
    training fingerprint, unless ``config.force`` is set. A run created from a deployment fails before
    any work when the worker has no MLFLOW_TRACKING_URI.
    """
    problem = deployment_problem(deployment.name if deployment.id else None, os.environ, consequence=UNSEEN_MODEL)
    if problem:
        raise DeploymentSetupError(problem)
    with pipeline_logs_in_run():
        return run_stages(resolve(config))


def run_stages(resolved: ResolvedConfig) -> PipelineOutcome:
    """The flow's body, in its run context, inside its MLflow run: opened first, closed FINISHED (with
    why training was skipped, if it was) or FAILED with the reason, also when the run is cancelled or
    interrupted."""
    logger = get_run_logger()
    logger.info("train-cyclegan: dataset %s, model %s, %d Ray worker(s), fingerprint %s",
                resolved.dataset_uri, resolved.registry.model_name, resolved.scaling.num_workers,
                resolved.fingerprint)
    flow_run_id = str(flow_run.id) if flow_run.id else None
    url = url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None
    live, link = open_pipeline_run(resolved, run_name=flow_run.name or FLOW_NAME,
                                   tags={"pipeline": FLOW_NAME, **flow_run_tags(flow_run_id, url),
                                         TAG_NOTE: running_description(resolved, flow_run_url=url)})
    logger.info("MLflow run: %s", link)
    monitor = start_system_metrics(live)
    try:
        outcome = tracked_stages(resolved, live, link)
    except BaseException as exc:  # cancellation and interrupts end the run FAILED too
        close_run(live, failed=exc, description=failed_description(resolved, failure_reason(exc), flow_run_url=url))
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    close_run(live, skipped=outcome.skipped, description=run_description(resolved, outcome, flow_run_url=url))
    return outcome


def tracked_stages(resolved: ResolvedConfig, live: TrackingRun, link: str) -> PipelineOutcome:
    """Ingest, the skip decision, train, evaluate, register, logging into the live run ``live``."""
    logger = get_run_logger()
    data_asset = dataset_asset(resolved.dataset_uri)
    dataset = materializing(ingest_stage, INGEST_OPTIONS, data_asset)(resolved)
    logger.info("dataset version %s: %s", dataset.version, dataset.counts)
    log_dataset_input(live, dataset, run_name=resolved.ray_run_name(dataset.version))

    if not resolved.force:
        reason = skip_reason(champion_identity_task(resolved), dataset, resolved)
        if reason:
            logger.info("skipping training: %s", reason)
            outcome = PipelineOutcome(dataset=dataset, skipped=reason)
            publish_summary(resolved, outcome, tracking_link=link)
            return outcome

    run_name = resolved.ray_run_name(dataset.version)
    logger.info("Ray Train run %s (a re-run with the same data and config resumes it)", run_name)
    run_asset = training_run_asset(resolved.run.storage_path, run_name,
                                   url=link if link.startswith("http") else None)
    train_task = materializing(train_stage, TRAIN_OPTIONS, run_asset, depends_on=[data_asset])
    trained = run_cached_stage(train_task, resolved, dataset, live, force=resolved.force)
    report = run_cached_stage(evaluate_task, resolved, trained, dataset, force=resolved.force)
    model = register_task(resolved, trained, report, live)
    materializing(model_version_stage, MODEL_VERSION_OPTIONS, version_asset(resolved, model),
                  depends_on=[run_asset])(resolved, model)
    outcome = PipelineOutcome(dataset=dataset, train=trained, report=report, model=model)
    publish_summary(resolved, outcome, tracking_link=link)
    logger.info("done: %s version %s (%s) %s=%.4f; %s", model.name, model.version,
                ", ".join(model.aliases) or "no alias", report.primary_metric, report.primary_value,
                model.reason)
    return outcome


def skip_reason(champion: tuple[str, str] | None, dataset: DatasetRef, config: ResolvedConfig) -> str:
    """Why this run need not train ('' when it must): the champion was trained on this dataset version
    with this training fingerprint. ``champion`` is its (dataset version, fingerprint)."""
    if champion is None or tuple(champion) != (dataset.version, config.fingerprint):
        return ""
    return (f"the champion of {config.registry.model_name!r} was trained on dataset version "
            f"{dataset.version} with this config (fingerprint {config.fingerprint}); "
            "set force=true to retrain")


def publish_summary(config: ResolvedConfig, outcome: PipelineOutcome, *, tracking_link: str = "") -> None:
    """Attach the markdown summary to the flow run as a Prefect artifact."""
    create_markdown_artifact(
        key="train-cyclegan-summary",
        markdown=summary_markdown(config, outcome, tracking_link=tracking_link),
        description=f"train-cyclegan run for {config.registry.model_name}",
    )
