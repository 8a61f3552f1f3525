"""PipelineConfig: the one typed configuration that flows from the CLI, the Prefect flow's parameters
or a YAML file into every stage (ingest, train, evaluate, register).

It composes the library's configs (``cyclegan_core.config``) with what only the pipeline knows:
where the data lives, how training scales on Ray, where checkpoints go and how models are registered.
Endpoints are never stored here: they come from the standard environment variables listed in
``ENVIRONMENT`` (the single source of truth that ``infra/`` manifests are checked against).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from cyclegan_core.config import DataConfig, ModelConfig, StrictModel, TrainConfig

# Environment variables the pipeline reads, and what each switches. Nothing else is read from the
# environment (boto3 and mlflow also read their own standard credential variables).
ENVIRONMENT: dict[str, str] = {
    "AWS_ENDPOINT_URL": "S3-compatible endpoint (MinIO, moto); unset means AWS S3",
    "AWS_DEFAULT_REGION": "S3 region",
    "AWS_ACCESS_KEY_ID": "S3 credentials (standard boto3 chain)",
    "AWS_SECRET_ACCESS_KEY": "S3 credentials (standard boto3 chain)",
    "RAY_ADDRESS": "existing Ray cluster ('auto', 'ray://host:10001'); unset means a local Ray",
    "MLFLOW_TRACKING_URI": "MLflow tracking server; unset means sqlite:///mlruns.db",
    "PREFECT_API_URL": "Prefect server API; unset means Prefect's ephemeral API",
    "CYCLEGAN_INCEPTION_WEIGHTS": "path or s3:// URI of the FID Inception weights",
}

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACT_ROOT = "./mlartifacts"


class ScalingSettings(StrictModel):
    """How Ray Train runs the training function."""

    num_workers: int = Field(1, ge=1, description="training workers (one per GPU)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    local_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray started when RAY_ADDRESS is unset (None = all)"
    )


class TrainingRunSettings(StrictModel):
    """Checkpointing, fault tolerance and naming of a Ray Train run."""

    run_name: str = Field("cyclegan", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    storage_path: str = Field("./runs", description="local path or s3://bucket/prefix for checkpoints")
    checkpoint_every_epochs: int = Field(1, ge=1)
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=-1, description="worker failures tolerated (-1 = unlimited)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke runs)")


class EvalSettings(StrictModel):
    """What evaluation computes."""

    inception_weights: str | None = Field(
        None, description="path or s3:// URI of Inception-v3 FID weights; None = CYCLEGAN_INCEPTION_WEIGHTS"
    )
    max_images: int | None = Field(None, ge=1, description="evaluate at most this many test images")
    batch_size: int = Field(8, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    grid_images: int = Field(8, ge=1, description="rows in the sample grid PNGs")


class RegistrySettings(StrictModel):
    """MLflow registration and the promotion gate."""

    model_name: str = Field("cyclegan", min_length=1)
    experiment: str = Field("cyclegan", min_length=1)
    primary_metric: str = Field("psnr_AtoB", description="metric the gate compares (EvalReport.metrics key)")
    higher_is_better: bool = True
    margin: float = Field(0.0, ge=0, description="a challenger must beat the champion by more than this")
    auto_promote: bool = True


class PipelineConfig(StrictModel):
    """Everything one run of the train-cyclegan pipeline needs."""

    dataset_uri: str = Field(..., description="s3://bucket/prefix holding trainA/ trainB/ testA/ testB/")
    cache_dir: Path = Field(Path(".cache/datasets"), description="local cache the dataset is ingested into")
    output_dir: Path = Field(Path("outputs"), description="local folder for exported generators and eval outputs")
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    run: TrainingRunSettings = Field(default_factory=TrainingRunSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    force: bool = Field(False, description="retrain even if the champion was trained on this dataset version")

    @field_validator("dataset_uri")
    @classmethod
    def _is_s3_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"dataset_uri must look like s3://bucket/prefix, got {value!r}")
        return value

    def config_hash(self) -> str:
        """Stable hash of everything that changes what training produces (for caching and naming)."""
        payload = self.model_dump(mode="json", exclude={"force", "eval", "registry"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_pipeline_config(path: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config file, apply dotted-key overrides (``{"train.lr": 1e-4}``) and validate.

    Raises ValueError naming the file and the offending field.
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read pipeline config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        # ValueError, like every other bad-config error here: callers catch one type
        raise ValueError(f"pipeline config {path} must be a YAML mapping, got {type(raw).__name__}")  # noqa: TRY004
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"invalid pipeline config {path}:\n{exc}") from exc


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted == "a.b"``, creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {key!r} is not a mapping")  # noqa: TRY004
    node[leaf] = value


def tracking_uri() -> str:
    """MLflow tracking URI: MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
