"""A version a person registered from a checkpoint's LoggedModel (the UI's "Register model"), given the
same model card and gate as the pipeline's own versions (``cyclegan gate NAME VERSION``).

Such a version has no tags: ``registered_checkpoint`` finds its LoggedModel (the version's source
``models:/<model_id>``) and checks it is a checkpoint of this pipeline with its weights;
``checkpoint_train_record`` describes it as the ``TrainResult`` the card and the gate read (its epoch as
the exported one); ``gate_registered`` writes the version's tags, links the evaluation's metrics to
the model and applies the gate (alias challenger; champion when it wins), after which the alias moves
and rollouts work as for any version. The evaluation itself is the pipeline's evaluate stage, run by
the caller on the same dataset version.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import ResolvedConfig
from pipelines.records import EvalReport, ModelVersionRef, TrainResult
from pipelines.registry.logged_models import (
    TAG_CHECKPOINT,
    TAG_EPOCH,
    TAG_PRUNED,
    TAG_RAY_RUN,
    TAG_STEP,
    has_weights,
    link_metrics,
    version_model_id,
)
from pipelines.registry.model_card import card_markdown, card_tags
from pipelines.registry.operations import TAG_GATE, TAG_GATE_REASON, apply_gate, version_ref
from pipelines.registry.run_log import exported_identity, version_tags
from pipelines.tracking.experiment import TAG_DATASET_VERSION, TAG_FINGERPRINT, git_sha
from pipelines.tracking.session import RegistryError

log = logging.getLogger(__name__)


def registered_checkpoint(client: MlflowClient, name: str, version: str) -> tuple[ModelVersion, LoggedModel]:
    """Version ``version`` of ``name`` and the checkpoint LoggedModel it was created from. Raises
    RegistryError naming what is wrong: no such version, not created from a LoggedModel, a LoggedModel
    that is not a checkpoint of this pipeline, or one whose weights were deleted."""
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(
            f"model {name!r} has no version {version!r} at {client.tracking_uri}: {exc.message}"
        ) from exc
    model_id = version_model_id(model_version)
    if model_id is None:
        raise RegistryError(
            f"{name} version {version} was not created from a LoggedModel (source "
            f"{model_version.source}); register a checkpoint's LoggedModel (epoch-NNNN)"
        )
    model = client.get_logged_model(model_id)
    needed = (TAG_CHECKPOINT, TAG_EPOCH, TAG_FINGERPRINT, TAG_DATASET_VERSION)
    missing = [tag for tag in needed if tag not in model.tags]
    if missing:
        raise RegistryError(f"LoggedModel {model.name} ({model_id}) of {name} version {version} is not a checkpoint "
                            f"of this pipeline: it lacks the tags {missing}")
    if not has_weights(model):
        raise RegistryError(f"LoggedModel {model.name} ({model_id}) of {name} version {version} has no weights: "
                            f"{model.tags.get(TAG_PRUNED) or f'status {model.status}'}; register a checkpoint that "
                            "still has them")
    return model_version, model


def checkpoint_train_record(model: LoggedModel, generators_dir: Path) -> TrainResult:
    """The checkpoint ``model`` as the TrainResult of its epoch (its generators in ``generators_dir``)."""
    tags = model.tags
    epoch, step = int(tags[TAG_EPOCH]), int(tags.get(TAG_STEP, 0))
    return TrainResult(run_name=tags.get(TAG_RAY_RUN, model.name), checkpoint_uri=tags[TAG_CHECKPOINT],
                       generators_dir=generators_dir, dataset_version=tags[TAG_DATASET_VERSION],
                       dataset_uri=tags.get("dataset_uri", ""), fingerprint=tags[TAG_FINGERPRINT], steps=step,
                       epochs=epoch, best_epoch=epoch, exported_checkpoint_uri=tags[TAG_CHECKPOINT],
                       history=[{"epoch": float(epoch), "step": float(step)}])


def gate_registered(client: MlflowClient, config: ResolvedConfig, model_version: ModelVersion, model: LoggedModel,
                    train: TrainResult, report: EvalReport) -> ModelVersionRef:
    """Give the hand-registered ``model_version`` its model card (tags and description) and apply the
    gate with ``report`` (the pipeline's evaluation of its generators). A version already gated is
    left as it is."""
    name, number = model_version.name, str(model_version.version)
    if TAG_GATE in model_version.tags:
        return version_ref(client, name, model_version, promoted=model_version.tags[TAG_GATE] == "promoted",
                           reason=f"already gated: {model_version.tags.get(TAG_GATE_REASON, '')}")
    sha = git_sha()
    tags = {key: value for key, value in version_tags(train, report).items() if key != "registration_key"}
    for key, value in (tags | card_tags(config, train, report, git_sha=sha)).items():
        client.set_model_version_tag(name, number, key, value)
    link_metrics(client, model.source_run_id or "", model.model_id, report.metrics, identity=exported_identity(train))

    def describe(decision: str, reason: str, champion_value: float | None) -> str:
        return card_markdown(config, train, report, git_sha=sha, decision=decision, reason=reason,
                             champion_value=champion_value)

    promoted, reason = apply_gate(client, client.get_model_version(name, number), config.registry, report,
                                  describe=describe)
    log.info("model %s version %s (LoggedModel %s, registered by hand): %s", name, number, model.name, reason)
    return version_ref(client, name, client.get_model_version(name, number), promoted=promoted, reason=reason)
