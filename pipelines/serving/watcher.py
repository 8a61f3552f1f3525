"""The rollout watcher: the one replica that makes the served version follow the registry.

Every ``poll_s`` it reads the registered-model tag ``rollout.<alias>.version`` (written by the
``rollout-champion`` flow; before any rollout, the alias's version). When that differs from the served
version it redeploys the model application with the new version; Serve then starts the new replicas,
routes to them once they loaded, and stops the old ones (``settings.model_deployment_options``). It
watches the deployment's status until it is healthy (the switch is done) or failed (the old replicas
keep serving; the failure is reported and the version tried again ``retry_after_s`` later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pipelines.serving.settings import MODEL_DEPLOYMENT, ServeSettings, settings_fingerprint

# Serve sets up this logger in every replica (its log file and stderr; a pod's log on Kubernetes)
log = logging.getLogger("ray.serve")

DEPLOY_CHECK_S = 1.0  # how often a switch in progress is checked


def wanted_version(*, rolled_out: str | None, alias_version: str | None) -> str | None:
    """The version last rolled out (``rollout.<alias>.version``), else, before any rollout is
    recorded, the alias's current version; None when neither is set."""
    return rolled_out or alias_version


def failed_state(version: str, serving: str | None, retry_after_s: float) -> str:
    keep = f"v{serving} stays served" if serving else "nothing is served"
    return f"v{version} failed to load; {keep}, v{version} is tried again {retry_after_s:g} s after its failure"


@dataclass(frozen=True)
class SwitchPlan:
    action: Literal["start", "keep", "wait"]
    version: str | None
    reason: str


def plan_switch(*, serving: str | None, wanted: str | None, failed_at: dict[str, float], now: float,
                retry_after_s: float) -> SwitchPlan:
    """Start ``wanted`` unless it is served already, nothing is wanted, or it failed to load less than
    ``retry_after_s`` ago (a version that failed is retried after that, not on every poll)."""
    if wanted is None:
        return SwitchPlan("wait", None, "no rollout recorded and the alias is not set: nothing to serve")
    if wanted == serving:
        return SwitchPlan("keep", wanted, f"serving v{wanted}")
    failed = failed_at.get(wanted)
    if failed is not None and now - failed < retry_after_s:
        return SwitchPlan("wait", wanted, failed_state(wanted, serving, retry_after_s))
    return SwitchPlan("start", wanted, f"v{wanted} wanted, v{serving or '-'} served")


DeployOutcome = Literal["deploying", "healthy", "failed"]


def deploy_outcome(app_status: str | None, deployment_status: str | None) -> DeployOutcome:
    """Where a redeploy of the model application stands, from Serve's application and deployment
    statuses (``RUNNING``/``HEALTHY`` once every replica runs the new version and the old ones stopped)."""
    if app_status == "DEPLOY_FAILED" or deployment_status == "DEPLOY_FAILED":
        return "failed"
    if app_status == "RUNNING" and deployment_status == "HEALTHY":
        return "healthy"
    return "deploying"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RolloutWatcher:
    """A Serve replica (one, in the front application) following the rollout; ``status`` answers
    ``GET /served-version``."""

    def __init__(self, settings: ServeSettings) -> None:
        from pipelines.tracking.session import mlflow_client

        self.settings = settings
        self.client = mlflow_client(settings.tracking_uri)
        self.fingerprint = settings_fingerprint(settings)
        self.served: str | None = None
        self.since: str | None = None
        self.deploying: tuple[str, float] | None = None  # (version, monotonic start)
        self.failed_at: dict[str, float] = {}
        self.last_failure: dict[str, str] | None = None
        self.state = "starting: reading the registry"
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def status(self) -> dict[str, Any]:
        return {"model": self.settings.model, "alias": self.settings.alias, "version": self.served,
                "since": self.since, "state": self.state, "last_failure": self.last_failure,
                "deploying": self.deploying[0] if self.deploying else None}

    def check_health(self) -> None:
        if self._task.done():  # the loop never ends by itself: Serve restarts this replica
            raise RuntimeError(f"the rollout watcher stopped: {self._task.exception()!r}")

    async def _follow(self) -> None:
        await self._adopt_running_version()
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug or an unexpected Serve answer must not stop the following
                log.exception("following the rollout of %s@%s", self.settings.model, self.settings.alias)
            await asyncio.sleep(DEPLOY_CHECK_S if self.deploying else self.settings.poll_s)

    async def poll_once(self) -> None:
        if self.deploying:
            await self._check_deploy()
        try:
            wanted = await asyncio.to_thread(self._wanted)
        except Exception as exc:  # noqa: BLE001 - MLflow down or the model missing: keep serving, retry
            state = f"cannot read {self.settings.model} from {self.settings.tracking_uri}: {type(exc).__name__}: {exc}"
            if state != self.state:
                log.warning(
                    "%s; v%s stays served, retrying every %g s", state, self.served or "-", self.settings.poll_s
                )
            self.state = state
            return
        if self.deploying:
            if wanted is not None and wanted != self.deploying[0]:  # the rollout moved on meanwhile
                log.info("v%s is wanted now: it replaces the switch to v%s", wanted, self.deploying[0])
                await self._deploy(wanted)
            return
        plan = plan_switch(serving=self.served, wanted=wanted, failed_at=self.failed_at, now=time.monotonic(),
                           retry_after_s=self.settings.retry_after_s)
        if plan.action == "start" and plan.version is not None:
            await self._deploy(plan.version)
        elif plan.reason != self.state:
            self.state = plan.reason
            if plan.action == "wait":
                log.info("%s", plan.reason)

    def _wanted(self) -> str | None:
        from pipelines.promotion.state import rollout_tag

        registered = self.client.get_registered_model(self.settings.model)
        alias_version = registered.aliases.get(self.settings.alias)
        return wanted_version(rolled_out=registered.tags.get(rollout_tag(self.settings.alias)),
                              alias_version=None if alias_version is None else str(alias_version))

    async def _deploy(self, version: str) -> None:
        from ray import serve

        from pipelines.serving.model import model_app

        self.state = f"switching to v{version}: its replicas are starting; v{self.served or '-'} serves meanwhile"
        log.info("%s", self.state)
        app = model_app(self.settings, version)
        # serve.run would wait until the new replicas run, without a bound; _run(_blocking=False) returns
        # once Serve has the new target, and _check_deploy follows it with its own timeout.
        await asyncio.to_thread(serve._run, app, _blocking=False, name=self.settings.model_app_name,
                                route_prefix=None)
        self.deploying = (version, time.monotonic())

    async def _check_deploy(self) -> None:
        assert self.deploying is not None
        version, began = self.deploying
        app_status, deployment_status, message = await asyncio.to_thread(self._model_app_status)
        outcome = deploy_outcome(app_status, deployment_status)
        if outcome == "healthy":
            self.deploying = None
            previous, self.served, self.since = self.served, version, now_iso()
            self.failed_at.pop(version, None)
            self.state = f"serving v{version}"
            log.info("switched %s v%s -> v%s in %.1f s", self.settings.model, previous or "-", version,
                     time.monotonic() - began)
        elif outcome == "failed":
            from pipelines.serving.model import load_error_reason

            self._failed(version, load_error_reason(message))
        elif time.monotonic() - began > self.settings.start_timeout_s:
            self._failed(version, f"its replicas did not start within {self.settings.start_timeout_s:g} s "
                                  f"({deployment_status}: {' '.join(message.split())[:300] or 'no message'})")

    def _failed(self, version: str, reason: str) -> None:
        self.deploying = None
        self.failed_at[version] = time.monotonic()
        self.last_failure = {"version": version, "reason": reason, "at": now_iso()}
        self.state = failed_state(version, self.served, self.settings.retry_after_s)
        log.error("%s: %s", self.state, reason)

    def _model_app_status(self) -> tuple[str | None, str | None, str]:
        """(application status, model deployment status, its message) of the model application."""
        from ray import serve

        app = serve.status().applications.get(self.settings.model_app_name)
        if app is None:
            return None, None, ""
        deployment = app.deployments.get(MODEL_DEPLOYMENT)
        if deployment is None:
            return str(getattr(app.status, "value", app.status)), None, ""
        return (str(getattr(app.status, "value", app.status)),
                str(getattr(deployment.status, "value", deployment.status)), deployment.message)

    async def _adopt_running_version(self) -> None:
        """A model application already running with these settings (this replica restarted, or the front
        was redeployed) is adopted, not restarted."""
        from ray import serve

        app_status, deployment_status, _ = await asyncio.to_thread(self._model_app_status)
        if deploy_outcome(app_status, deployment_status) != "healthy":
            return
        try:
            handle = await asyncio.to_thread(serve.get_deployment_handle, MODEL_DEPLOYMENT,
                                             self.settings.model_app_name)
            replica = await asyncio.wait_for(handle.describe.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - nothing to adopt: the first poll deploys
            log.info("not adopting the running model replicas: %s", exc)
            return
        if replica.get("settings") == self.fingerprint:
            self.served, self.since = replica["version"], replica["loaded_at"]
            self.state = f"serving v{self.served}"
            log.info("adopted the running replicas of %s v%s", self.settings.model, self.served)
