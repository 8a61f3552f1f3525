"""The Prefect flow ``train-cyclegan``: ingest -> train -> evaluate -> register (+ promotion gate).

Each stage is a plain function (``pipelines.ingest`` / ``train`` / ``evaluate`` / ``registry``) wrapped
here in a Prefect task that adds what orchestration owns: retries with exponential backoff and jitter
for *transient* failures only (network, S3 5xx/throttling, an unreachable MLflow server, a lost Ray
cluster), timeouts, caching of finished stages and the run summary artifact. A bad dataset or an
invalid config fails once, clearly: retrying would not help.

Re-running the flow after a failure does not redo finished work: ingestion is incremental (an unchanged
prefix downloads nothing), training is cached on (dataset version, config hash) and otherwise resumes
from its last checkpoint (same run name + storage), evaluation is cached on the checkpoint, and
registration is idempotent (the same training result yields one model version).
"""

import base64
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.flow_engine import FlowRunTimeoutError
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from pipelines.config import PipelineConfig, tracking_uri
from pipelines.records import DatasetRef, EvalReport, ModelVersionRef, PipelineOutcome, TrainResult

FLOW_NAME = "train-cyclegan"
HOUR = 3600


def is_transient_failure(exc: BaseException) -> bool:
    """True for failures a retry can fix: S3 / MLflow / Ray connectivity, not bad data or config."""
    from ray.exceptions import RayActorError, RaySystemError

    from pipelines import registry, s3

    if isinstance(exc, (TaskRunTimeoutError, FlowRunTimeoutError)):
        return False  # the stage ran out of its own time budget: a retry would do the same
    if s3.is_transient(exc) or registry.is_transient(exc):
        return True
    return isinstance(exc, (RaySystemError, RayActorError, ConnectionError, TimeoutError))


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task failed with a transient error."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the task raised
        transient = is_transient_failure(exc)
        logging.getLogger(__name__).warning(
            "%s failed with %s: %s (%s)", task_run.name, type(exc).__name__, exc,
            "transient, will retry" if transient else "not transient, not retrying",
        )
        return transient
    return False


def _retrying(**options: Any) -> dict[str, Any]:
    """Common task options: 3 retries, backoff 10 s, 20 s, 40 s with 50% jitter, transient errors only."""
    return dict(
        retries=3,
        retry_delay_seconds=exponential_backoff(backoff_factor=10),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_if_transient,
        **options,
    )


def _train_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: PipelineConfig = parameters["config"]
    dataset: DatasetRef = parameters["dataset"]
    return f"train-{dataset.version}-{config.config_hash()}"


def _evaluate_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: PipelineConfig = parameters["config"]
    trained: TrainResult = parameters["trained"]
    settings = config.eval.model_dump_json() + config.registry.primary_metric
    import hashlib

    digest = hashlib.sha256((trained.checkpoint_uri + trained.dataset_version + settings).encode()).hexdigest()
    return f"evaluate-{digest[:24]}"


@task(name="ingest", timeout_seconds=2 * HOUR, cache_policy=NO_CACHE, **_retrying())
def ingest_task(config: PipelineConfig) -> DatasetRef:
    """Bring the S3 prefix into the local cache (incremental) and return the verified dataset."""
    from pipelines.ingest import ingest_prefix

    summary = ingest_prefix(config.dataset_uri, config.cache_dir, load_size=config.data.load_size)
    return summary.dataset


@task(
    name="train",
    timeout_seconds=72 * HOUR,
    cache_key_fn=_train_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    **_retrying(),
)
def train_task(config: PipelineConfig, dataset: DatasetRef) -> TrainResult:
    """Train on Ray (resumes from the run's last checkpoint if an earlier attempt died)."""
    from pipelines.train import train_on_ray

    return train_on_ray(config, dataset)


@task(
    name="evaluate",
    timeout_seconds=4 * HOUR,
    cache_key_fn=_evaluate_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    **_retrying(),
)
def evaluate_task(config: PipelineConfig, trained: TrainResult, dataset: DatasetRef) -> EvalReport:
    """Score the trained generators on the test splits and write the sample grids."""
    from pipelines.evaluate import evaluate_model

    out_dir = config.output_dir / trained.run_name / "eval"
    return evaluate_model(trained.generators_dir, dataset, config, out_dir)


@task(name="register", timeout_seconds=HOUR, cache_policy=NO_CACHE, **_retrying())
def register_task(config: PipelineConfig, trained: TrainResult, report: EvalReport) -> ModelVersionRef:
    """Log the run and the model to MLflow, register a version and apply the promotion gate."""
    from pipelines.registry import register_model

    return register_model(config, trained, report)


@task(name="champion-dataset-version", cache_policy=NO_CACHE, **_retrying(timeout_seconds=600))
def champion_dataset_version_task(model_name: str) -> str | None:
    from pipelines.registry import champion_dataset_version

    return champion_dataset_version(model_name)


@flow(name=FLOW_NAME, log_prints=False, validate_parameters=True)
def train_cyclegan(config: PipelineConfig) -> PipelineOutcome:
    """Ingest an unpaired dataset from S3, train CycleGAN on Ray, evaluate, register in MLflow.

    Training is skipped when the champion model was trained on the same dataset version, unless
    ``config.force`` is set.
    """
    logger = get_run_logger()
    logger.info("train-cyclegan: dataset %s, model %s, %d Ray worker(s)",
                config.dataset_uri, config.registry.model_name, config.scaling.num_workers)
    dataset = ingest_task(config)
    logger.info("dataset version %s: %s", dataset.version, dataset.counts)

    if not config.force:
        champion_version = champion_dataset_version_task(config.registry.model_name)
        if champion_version == dataset.version:
            reason = (f"dataset version {dataset.version} is unchanged since the champion of "
                      f"{config.registry.model_name!r} was trained; set force=true to retrain")
            logger.info("skipping training: %s", reason)
            outcome = PipelineOutcome(dataset=dataset, skipped=reason)
            publish_summary(config, outcome)
            return outcome

    run_config = with_versioned_run_name(config, dataset)
    logger.info("Ray Train run %s (a re-run with the same data and config resumes it)", run_config.run.run_name)
    trained = train_task.with_options(refresh_cache=config.force)(run_config, dataset)
    report = evaluate_task.with_options(refresh_cache=config.force)(config, trained, dataset)
    model = register_task(config, trained, report)
    outcome = PipelineOutcome(dataset=dataset, train=trained, report=report, model=model)
    publish_summary(config, outcome)
    logger.info("done: %s version %s (%s) %s=%.4f; %s", model.name, model.version,
                ", ".join(model.aliases) or "no alias", report.primary_metric, report.primary_value,
                model.reason)
    return outcome


def with_versioned_run_name(config: PipelineConfig, dataset: DatasetRef) -> PipelineConfig:
    """Name the Ray run after the data and config it trains on.

    Ray Train resumes a run with the same name and storage from its latest checkpoint: that is what a
    retry after a crash needs, and what nightly retraining on *new* data must not do.
    """
    suffix = f"{dataset.version[:8]}-{config.config_hash()[:8]}"
    run = config.run.model_copy(update={"run_name": f"{config.run.run_name}-{suffix}"})
    return config.model_copy(update={"run": run})


def summary_markdown(config: PipelineConfig, outcome: PipelineOutcome) -> str:
    """The run summary shown as a Prefect artifact (and printed by the demo)."""
    lines = [
        f"# train-cyclegan: {config.registry.model_name}",
        "",
        (f"- dataset: `{outcome.dataset.uri}` version `{outcome.dataset.version}` "
         f"({', '.join(f'{k}: {v}' for k, v in sorted(outcome.dataset.counts.items()))}; "
         f"{outcome.dataset.quarantined} quarantined)"),
    ]
    if outcome.skipped:
        lines += [f"- training skipped: {outcome.skipped}"]
        return "\n".join(lines) + "\n"
    assert outcome.train and outcome.report and outcome.model
    model = outcome.model
    lines += [
        (f"- training: run `{outcome.train.run_name}`, {outcome.train.epochs} epochs, "
         f"{outcome.train.steps} steps, checkpoint `{outcome.train.checkpoint_uri}`"),
        (f"- model: `{model.name}` version {model.version} "
         f"(aliases: {', '.join(model.aliases) or 'none'}); {model.reason}"),
        f"- MLflow: {mlflow_link(model)}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in sorted(outcome.report.metrics.items()):
        marker = " (primary)" if name == outcome.report.primary_metric else ""
        lines.append(f"| {name}{marker} | {value:.4f} |")
    for name, why in sorted(outcome.report.skipped.items()):
        lines.append(f"| {name} | skipped: {why} |")
    grid = outcome.report.artifacts.get("grid_AtoB")
    if grid is not None and Path(grid).is_file() and Path(grid).stat().st_size < 512 * 1024:
        encoded = base64.b64encode(Path(grid).read_bytes()).decode()
        lines += ["", f"Sample grid (input | translated | reconstructed), `{grid}`:", "",
                  f"![grid_AtoB](data:image/png;base64,{encoded})"]
    elif grid is not None:
        lines += ["", f"Sample grid: `{grid}`"]
    return "\n".join(lines) + "\n"


def mlflow_link(model: ModelVersionRef) -> str:
    uri = tracking_uri()
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/models/{model.name}/versions/{model.version} (run {model.run_id})"
    return f"run {model.run_id} in {uri} (browse with `mlflow ui --backend-store-uri {uri}`)"


def publish_summary(config: PipelineConfig, outcome: PipelineOutcome) -> None:
    """Attach the markdown summary to the flow run as a Prefect artifact."""
    create_markdown_artifact(
        key="train-cyclegan-summary",
        markdown=summary_markdown(config, outcome),
        description=f"train-cyclegan run for {config.registry.model_name}",
    )
