"""The Prefect flow ``rollout-champion``: roll a registered model's aliased version out.

Run by prefect.yaml's ``rollout-champion/on-promotion`` deployment: its triggers pass the version of
an alias move (``cyclegan.model.alias.moved``) or no version (``cyclegan.model.rollout.reconcile``, the
receiver's start), and its schedule reconciles as a safety net. The flow re-reads the alias, decides
(``decision.decide``: stale and duplicate requests are skipped), runs the ``translate-cyclegan`` flow
for each target with that exact version (``models:/<name>/<version>``), then records the rollout in
MLflow (``state.record_rollout``). The flow run is renamed after the version and what triggered it.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, Field

from cyclegan_core.config import StrictModel
from pipelines.config import RegistrySettings, services_from_env
from pipelines.flows.common import (
    DeploymentSetupError,
    deployment_problem,
    pipeline_logs_in_run,
    rename_flow_run,
)
from pipelines.promotion.decision import Decision, decide

FLOW_NAME = "rollout-champion"
SUMMARY_KEY = "rollout-champion-summary"


class RolloutTarget(StrictModel):
    """One batch translation of a rollout: inputs, outputs (version-keyed below), direction."""

    input_uri: str = Field(min_length=1)
    output_uri: str = Field(min_length=1)
    direction: str = "AtoB"


class RolloutOutcome(BaseModel):
    """What a rollout run did (the flow's return value)."""

    model_name: str
    alias: str
    requested: str | None
    version: str | None
    action: str
    reason: str
    triggered_by: str
    rolled_out_at: str | None = None
    results: list[dict[str, Any]] = Field(default_factory=list, description="translate-cyclegan results")
    served: dict[str, str] = Field(default_factory=dict, description="model server URL -> what it serves")


def run_name(model: str, alias: str, version: str | None, triggered_by: str, action: str = "") -> str:
    """``cyclegan@champion-v3 by mlflow-webhook:1a2b3c4d`` (``-reconcile`` before the version is known)."""
    what = f"v{version}" if version else "reconcile"
    suffix = f" ({action})" if action and action != "rollout" else ""
    return f"{model}@{alias}-{what} by {triggered_by}{suffix}"


def flow_run_label() -> str:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else "no-flow-run"


def roll_out_target(target: RolloutTarget, model_uri: str, triggered_by: str) -> dict[str, Any]:
    """One ``translate-cyclegan`` subflow run of ``model_uri`` over ``target``."""
    from pipelines.flows.translate import translate_cyclegan

    result = translate_cyclegan(input_uri=target.input_uri, output_uri=target.output_uri, model_uri=model_uri,
                                direction=target.direction, triggered_by=triggered_by)
    return result.model_dump(mode="json") if isinstance(result, BaseModel) else dict(result)


def summary_markdown(outcome: RolloutOutcome) -> str:
    lines = [f"# Rollout of {outcome.model_name}@{outcome.alias}", "",
             f"- decision: **{outcome.action}**: {outcome.reason}",
             (f"- requested version: {outcome.requested or '(reconcile)'}; rolled out: "
              f"{outcome.version if outcome.action == 'rollout' else '-'}"),
             f"- triggered by: `{outcome.triggered_by}`"]
    if outcome.rolled_out_at:
        lines.append(f"- recorded in MLflow at {outcome.rolled_out_at} (version tags `rolled_out_at`, "
                     f"`rolled_out_by`; model tag `rollout.{outcome.alias}.version`)")
    for result in outcome.results:
        lines.append(f"- `{result.get('input_uri')}` -> `{result.get('output_prefix')}`: "
                     f"{result.get('translated', 0)} translated, {result.get('skipped', 0)} unchanged, "
                     f"{result.get('quarantined', 0)} quarantined")
    for url, detail in outcome.served.items():
        lines.append(f"- model server `{url}`: {detail}")
    return "\n".join(lines) + "\n"


def report_servers(urls: list[str], model: str, version: str, timeout_s: float) -> dict[str, str]:
    """What each model server serves once it had ``timeout_s`` to switch (a server that does not is
    reported, not a failed rollout: the outputs and the record are written)."""
    from pipelines.serving.served import wait_until_served

    logger = get_run_logger()
    served = {}
    for url in urls:
        check = wait_until_served(url, model=model, version=version, timeout_s=timeout_s)
        (logger.info if check.served else logger.warning)("model server %s: %s", url, check.detail)
        served[url] = check.detail
    return served


def initial_run_name() -> str:
    """The flow run's name before the alias is read: the requested version (or reconcile)."""
    parameters = flow_run.parameters
    return run_name(parameters.get("model_name", RegistrySettings().model_name), parameters.get("alias", "champion"),
                    parameters.get("version") or None, parameters.get("triggered_by", "manual"))


@flow(name=FLOW_NAME, log_prints=False, flow_run_name=initial_run_name)
def rollout_champion(model_name: str = RegistrySettings().model_name, alias: str = "champion",
                     version: str | None = None, targets: list[RolloutTarget] | None = None,
                     triggered_by: str = "manual", servers: list[str] | None = None,
                     served_timeout_s: float = 120.0) -> RolloutOutcome:
    """Roll ``model_name@alias`` out over ``targets`` (``version``: the move's version; None reconciles),
    then wait (at most ``served_timeout_s``) for each ``cyclegan serve`` URL of ``servers`` to serve it."""
    from pipelines.promotion import state
    from pipelines.tracking.session import check_reachable, mlflow_client, with_mlflow_retries

    logger = get_run_logger()
    problem = deployment_problem(deployment.name if deployment.id else None, os.environ,
                                 consequence=f"{model_name}@{alias} would be read from a local SQLite file")
    if problem:
        raise DeploymentSetupError(problem)
    requested = str(version).strip() if version not in (None, "") else None
    tracking_uri = services_from_env(os.environ).tracking_uri
    with pipeline_logs_in_run():
        check_reachable(tracking_uri)
        client = mlflow_client(tracking_uri)

        def read() -> Decision:
            return decide(model=model_name, alias=alias, requested=requested,
                          current=state.current_version(client, model_name, alias),
                          rolled_out=state.rolled_out_version(client, model_name, alias))

        decision = with_mlflow_retries(read, what=f"reading {model_name}@{alias}", uri=tracking_uri)
        rename_flow_run(run_name(model_name, alias, decision.version, triggered_by, decision.action))
        logger.info("%s", decision.reason)
        outcome = RolloutOutcome(model_name=model_name, alias=alias, requested=requested, version=decision.version,
                                 action=decision.action, reason=decision.reason, triggered_by=triggered_by)
        if decision.action == "rollout" and decision.version is not None:
            model_uri = f"models:/{model_name}/{decision.version}"
            for target in targets or []:
                logger.info("translating %s with %s into %s", target.input_uri, model_uri, target.output_uri)
                outcome.results.append(roll_out_target(target, model_uri, f"rollout {model_name}@{alias} "
                                                                          f"v{decision.version} ({triggered_by})"))
            outcome.rolled_out_at = with_mlflow_retries(
                lambda: state.record_rollout(client, model_name, alias, decision.version, by=triggered_by,
                                             flow_run=flow_run_label()),
                what=f"recording the rollout of {model_name} v{decision.version}", uri=tracking_uri)
            logger.info("rolled out %s@%s v%s over %d target(s); recorded at %s", model_name, alias,
                        decision.version, len(targets or []), outcome.rolled_out_at)
            outcome.served = report_servers(servers or [], model_name, decision.version, served_timeout_s)
    create_markdown_artifact(summary_markdown(outcome), key=SUMMARY_KEY,
                             description=f"rollout of {model_name}@{alias}")
    return outcome
