"""The rollout's record in the MLflow registry: which version of an alias was rolled out last
(registered-model tag ``rollout.<alias>.version``) and, on each rolled-out version, when and by what
(version tags ``rolled_out_at``, ``rolled_out_by``, ``rolled_out_flow_run``)."""

from __future__ import annotations

from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.tracking.session import RegistryError

TAG_ROLLED_OUT_AT = "rolled_out_at"
TAG_ROLLED_OUT_BY = "rolled_out_by"
TAG_ROLLED_OUT_FLOW_RUN = "rolled_out_flow_run"


def rollout_tag(alias: str) -> str:
    return f"rollout.{alias}.version"


def current_version(client: MlflowClient, model: str, alias: str) -> str | None:
    """The version ``model@alias`` points at now (None: the alias is not set). Raises RegistryError
    for a model that does not exist."""
    try:
        registered = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model {model!r} at {client.tracking_uri}: check the "
                                "rollout's model_name") from exc
        raise
    version = registered.aliases.get(alias)
    return None if version is None else str(version)


def rolled_out_version(client: MlflowClient, model: str, alias: str) -> str | None:
    """The version of ``model@alias`` last rolled out (None: never)."""
    return client.get_registered_model(model).tags.get(rollout_tag(alias))


def record_rollout(client: MlflowClient, model: str, alias: str, version: str, *, by: str,
                   flow_run: str, at: datetime | None = None) -> str:
    """Record that ``version`` is rolled out; returns the ISO time recorded. The registered-model tag
    is written last: it is what the next run compares with."""
    when = (at or datetime.now(UTC)).isoformat(timespec="seconds")
    client.set_model_version_tag(model, version, TAG_ROLLED_OUT_AT, when)
    client.set_model_version_tag(model, version, TAG_ROLLED_OUT_BY, by)
    client.set_model_version_tag(model, version, TAG_ROLLED_OUT_FLOW_RUN, flow_run)
    client.set_registered_model_tag(model, rollout_tag(alias), version)
    return when
