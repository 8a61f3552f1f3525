"""What the flows share: the retry policy of their tasks, the refusal of a deployment run that lacks a
tracking server, the flow run's name and where the ``pipelines`` loggers' lines go while a flow runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_engine import FlowRunTimeoutError
from prefect.logging.handlers import APILogHandler
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from pipelines.retry import is_transient

logger = logging.getLogger(__name__)


class DeploymentSetupError(RuntimeError):
    """A deployment's worker lacks a service the run needs; raised before any work."""


def deployment_problem(deployment: str | None, env: Mapping[str, str], *, consequence: str) -> str:
    """Why a flow run may not start ('' when it may). A run created from ``deployment`` (None: not a
    deployment run) needs a tracking server: with the embedded SQLite default, ``consequence`` happens in
    the worker's working folder, where nobody looks."""
    if deployment is None or env.get("MLFLOW_TRACKING_URI"):
        return ""
    return (f"flow run of deployment {deployment!r}: MLFLOW_TRACKING_URI is not set in the worker's "
            f"environment, so {consequence}; set MLFLOW_TRACKING_URI (e.g. http://mlflow:5000) on the "
            "worker or in the deployment's job_variables env and run it again")


def is_transient_failure(exc: BaseException) -> bool:
    """True for failures a retry can fix (``pipelines.retry.is_transient``); a stage that ran out of its
    own time budget is not one: a retry would do the same."""
    if isinstance(exc, (TaskRunTimeoutError, FlowRunTimeoutError)):
        return False
    return is_transient(exc)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task failed with a transient error."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the task raised
        transient = is_transient_failure(exc)
        logger.warning("%s failed with %s: %s (%s)", task_run.name, type(exc).__name__, exc,
                       "transient, will retry" if transient else "not transient, not retrying")
        return transient
    return False


def retrying(**options: Any) -> dict[str, Any]:
    """``options`` plus the one retry policy of the flows' tasks: 3 retries, backoff 10 s, 20 s, 40 s with
    50% jitter, transient errors only."""
    return dict(
        retries=3,
        retry_delay_seconds=exponential_backoff(backoff_factor=10),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_if_transient,
        **options,
    )


def rename_flow_run(name: str) -> None:
    """Name the current flow run (e.g. once the model version is known), if there is one."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, name=name)


@contextmanager
def pipeline_logs_in_run() -> Iterator[None]:
    """Send the ``pipelines.*`` loggers' INFO lines to the current flow run's logs (Prefect API and UI)
    while the block runs: what ``PREFECT_LOGGING_EXTRA_LOGGERS=pipelines`` does (Prefect's API log
    handler on the logger), plus the INFO level a flow-run process lacks (its root logger is at
    WARNING). Lines from other threads reach the run when the thread runs in a copy of the run's
    context (``pipelines.train.progress`` does)."""
    pipeline_logger = logging.getLogger("pipelines")
    handler = None
    if not any(isinstance(existing, APILogHandler) for existing in pipeline_logger.handlers):
        handler = APILogHandler()
        pipeline_logger.addHandler(handler)
    level = pipeline_logger.level
    if pipeline_logger.getEffectiveLevel() > logging.INFO:
        pipeline_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        pipeline_logger.setLevel(level)
        if handler is not None:
            pipeline_logger.removeHandler(handler)
