"""The Prefect flow ``translate-cyclegan``: batch-translate an S3 prefix (or a local folder) with a model.

Thin orchestration over ``pipelines.batch.translate_batch``: the flow reads its environment once
(``batch_settings``), names its run after the model version it resolved (``cyclegan-v3-AtoB``), keeps a
progress artifact at the share of inputs done, publishes a summary artifact (counts, before/after
thumbnails, the quarantined inputs and why) and fails when more inputs were quarantined than
``max_quarantined`` tolerates (the others are written). A transient failure retries the task, which
only translates what the failed attempt did not finish.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment

from cyclegan_core.inference.files import translate_options
from cyclegan_core.inference.model_source import is_registry_uri
from pipelines.batch import (
    BatchResult,
    BatchSettings,
    QuarantineToleranceError,
    batch_settings,
    translate_batch,
)
from pipelines.batch.artifacts import sample_thumbnails, summary_markdown
from pipelines.batch.planning import ModelIdentity
from pipelines.batch.ray_job import BatchProgress
from pipelines.flows.common import (
    DeploymentSetupError,
    deployment_problem,
    pipeline_logs_in_run,
    rename_flow_run,
    retrying,
)

FLOW_NAME = "translate-cyclegan"
PROGRESS_ARTIFACT_KEY = "translate-cyclegan-progress"
SUMMARY_ARTIFACT_KEY = "translate-cyclegan-summary"


def model_lookup_problem(deployment: str | None, model_uri: str, env: Mapping[str, str]) -> str:
    """Why a deployment run may not start ('' when it may): a registry URI needs the tracking server,
    not the SQLite default in the worker's working folder, which holds no model."""
    if not is_registry_uri(model_uri):
        return ""
    return deployment_problem(deployment, env, consequence=f"{model_uri} would be looked up in a local SQLite file")


@task(name="translate", cache_policy=NO_CACHE, **retrying())
def translate_task(settings: BatchSettings) -> BatchResult:
    """Resolve the model, translate what is new or changed, write the manifest."""
    progress = create_progress_artifact(0.0, key=PROGRESS_ARTIFACT_KEY, description="resolving the model")

    def on_model(model: ModelIdentity) -> None:
        rename_flow_run(f"{model.name}-{model.label}-{settings.options.direction}")
        get_run_logger().info("translating with %s (%s), triggered by %s", model.resolved_uri, model.uri,
                              settings.triggered_by)

    def on_batch(state: BatchProgress) -> None:
        update_progress_artifact(progress, 100.0 * state.done / max(1, state.total), description=state.line())

    result = translate_batch(settings, on_model=on_model, on_batch=on_batch)
    update_progress_artifact(progress, 100.0, description=f"done: {result.translated} translated, "
                             f"{result.skipped} unchanged, {result.quarantined} quarantined")
    return result


def publish_summary(result: BatchResult, settings: BatchSettings) -> None:
    thumbnails = sample_thumbnails(result, endpoint_url=settings.services.s3_endpoint_url,
                                   region=settings.services.s3_region)
    create_markdown_artifact(key=SUMMARY_ARTIFACT_KEY, markdown=summary_markdown(result, thumbnails),
                             description=f"translate-cyclegan with {result.model_name} v{result.model_version}")


@flow(name=FLOW_NAME, log_prints=False, validate_parameters=True)
def translate_cyclegan(
    input_uri: str,
    output_uri: str,
    model_uri: str | None = None,
    direction: str = "AtoB",
    triggered_by: str = "manual",
    max_quarantined: int | None = 0,
    batch_size: int = 8,
    actors: int | None = None,
    use_gpu: bool | None = None,
    memory_budget: int | None = None,
    backend: str = "auto",
    precision: str = "auto",
) -> BatchResult:
    """Translate the images under ``input_uri`` into ``output_uri/<model>/v<version>/<direction>/`` with
    ``model_uri`` (default ``models:/cyclegan@champion``), only those new or changed since the last run
    of that version; fails when more than ``max_quarantined`` inputs are quarantined (None: any)."""

    options = translate_options(direction=direction, batch_size=batch_size, actors=actors, backend=backend,
                                precision=precision, memory_budget=memory_budget, max_skipped=max_quarantined,
                                device=None if use_gpu is None else "cuda" if use_gpu else "cpu")
    settings = batch_settings(input_uri, output_uri, model_uri, env=os.environ, options=options,
                              triggered_by=triggered_by)
    problem = model_lookup_problem(deployment.name if deployment.id else None, settings.model_uri, os.environ)
    if problem:
        raise DeploymentSetupError(problem)
    with pipeline_logs_in_run():
        result = translate_task(settings)
        publish_summary(result, settings)
    if not result.within_tolerance:
        raise QuarantineToleranceError(
            f"{result.quarantined} input(s) quarantined, more than max_quarantined={max_quarantined}; the others "
            f"are translated under {result.output_prefix}; the summary artifact lists each with its reason")
    return result
