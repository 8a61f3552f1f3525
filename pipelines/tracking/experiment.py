"""The MLflow experiment every run of the pipeline goes into, and what all of its runs, LoggedModels
and versions are tagged or parametrised with (the training fingerprint, the dataset version, the git
commit, the config as params): shared by the live run and the registry below which it sits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import DEFAULT_ARTIFACT_ROOT, PipelineConfig
from pipelines.tracking.session import RegistryError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# MLflow rejects param values longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH); longer
# values are truncated in params, the full config is logged as an artifact.
MAX_PARAM_LENGTH = 6000
TAG_FINGERPRINT = "training_fingerprint"
TAG_DATASET_VERSION = "dataset_version"
# MLflow 3's UI opens an experiment by its kind: this one is model training (runs, logged models to
# compare and register), not the GenAI view it infers for an untagged experiment.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def flatten_params(config: PipelineConfig, *, max_length: int = MAX_PARAM_LENGTH) -> dict[str, str]:
    """The typed config as MLflow params: dotted keys, string values, truncated to MLflow's limit."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
            return
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > max_length:
            text = text[: max_length - 3] + "..."
        flat[prefix] = text

    walk("", config.model_dump(mode="json"))
    return flat


def git_sha(cwd: Path = PROJECT_ROOT) -> str:
    """Commit of the project checkout, or 'unknown' outside a git checkout / without git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Id of the experiment ``name``, created if missing (under ./mlartifacts for a SQLite store),
    tagged as a model-training experiment (``EXPERIMENT_KIND``) unless it already says what it is."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise RegistryError(f"MLflow experiment {name!r} at {uri} is deleted; "
                                "restore it in the UI or set registry.experiment to another name")
        if experiment.tags.get(TAG_EXPERIMENT_KIND) is None:
            client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # The embedded default keeps artifacts in ./mlartifacts (what `mlflow ui` is told in the README).
        artifact_location = Path(DEFAULT_ARTIFACT_ROOT).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # created concurrently
