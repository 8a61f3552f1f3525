"""PipelineConfig, the one typed configuration of a pipeline run, and ``resolve()``, which turns it into
the ``ResolvedConfig`` every stage receives.

The CLI and the Prefect flow call ``resolve(config)`` once, at their entry: paths become absolute (Ray
workers run in their own working directory), the ``services`` section is filled from ``ENVIRONMENT``
(the one list of variables the pipeline reads) and the run's identity, the training fingerprint, is
fixed. Nothing below the entry reads the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from cyclegan_core.config import DataConfig, ModelConfig, StrictModel, TrainConfig
from cyclegan_core.training.watchdog import WatchdogConfig

# Environment variables the pipeline reads, and what each switches (``infra/`` manifests are checked
# against this list). boto3, mlflow, ray and prefect also read their own standard variables.
ENVIRONMENT: dict[str, str] = {
    "AWS_ENDPOINT_URL": "S3-compatible endpoint (MinIO, moto); unset means AWS S3",
    "AWS_ENDPOINT_URL_S3": "S3 endpoint for S3 only (wins over AWS_ENDPOINT_URL)",
    "AWS_DEFAULT_REGION": "S3 region",
    "AWS_REGION": "S3 region (wins over AWS_DEFAULT_REGION)",
    "AWS_ACCESS_KEY_ID": "S3 credentials (standard boto3 chain)",
    "AWS_SECRET_ACCESS_KEY": "S3 credentials (standard boto3 chain)",
    "AWS_SESSION_TOKEN": "S3 temporary credentials (standard boto3 chain)",
    "RAY_ADDRESS": "existing Ray cluster ('auto', 'ray://host:10001'); unset means a local Ray",
    "RAY_TRAIN_V2_ENABLED": "Ray Train V2 (the pipeline sets 1 unless it is set; 0 is refused)",
    "MLFLOW_TRACKING_URI": "MLflow tracking server; unset means sqlite:///mlruns.db",
    "MLFLOW_TRACKING_USERNAME": "MLflow basic-auth user (read by MLflow itself; unset: no auth)",
    "MLFLOW_TRACKING_PASSWORD": "MLflow basic-auth password (read by MLflow itself)",
    "PREFECT_API_URL": "Prefect server API; unset means Prefect's ephemeral API",
    "PREFECT_API_AUTH_STRING": "Prefect server basic auth 'user:password' (read by Prefect itself)",
    "CYCLEGAN_INCEPTION_WEIGHTS": "path or s3:// URI of the FID Inception weights",
    "CYCLEGAN_CACHE_DIR": "folder for the measured auto decisions and converted OpenVINO models; unset means "
                          "~/.cache/cyclegan of the machine that translates or trains",
    "CYCLEGAN_BACKEND": "backend of the registered model when MLflow loads it (mlflow models serve, "
                        "mlflow.pyfunc.load_model): auto, torch, openvino; unset means auto",
    "CYCLEGAN_PRECISION": "precision of the registered model when MLflow loads it: auto, fp32, bf16, fp16, int8 "
                          "is refused (no calibration images); unset means auto",
}

# Read when set, left unset by the deployments in infra/ (their defaults are what a deployment wants).
OPTIONAL_ENVIRONMENT = frozenset({"AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "RAY_TRAIN_V2_ENABLED",
                                  "CYCLEGAN_CACHE_DIR", "CYCLEGAN_BACKEND", "CYCLEGAN_PRECISION"})

# Credentials MLflow and Prefect read themselves; a deployment sets them only where a process talks to
# that server (the flow runs), never on the Ray nodes. Nothing here reads or logs them.
CREDENTIAL_ENVIRONMENT = frozenset({"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"})

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
    checkpoint_upload: Literal["async", "sync"] = Field(
        "async", description="async: workers go on training while Ray Train uploads a checkpoint (at most one "
        "upload in flight per worker); sync: they wait for the upload")
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
    every_epochs: int = Field(
        1, ge=0, description="score the generators during training every N epochs and at each checkpoint (0: never)")
    during_training_images: int = Field(16, ge=1, description="test images per domain scored during training")
    sample_images: int = Field(4, ge=1, description="held-out images in the labelled sample grid of an evaluation")
    sample_tile: int = Field(160, ge=32, description="pixels per image in that grid")


class RegistrySettings(StrictModel):
    """MLflow registration and the promotion gate."""

    model_name: str = Field("cyclegan", min_length=1)
    experiment: str = Field("cyclegan", min_length=1)
    primary_metric: str = Field("psnr_AtoB", description="metric the gate compares (EvalReport.metrics key)")
    higher_is_better: bool = True
    margin: float = Field(0.0, ge=0, description="a challenger must beat the champion by more than this")
    auto_promote: bool = True


class Services(StrictModel):
    """Where the services are, read from ``ENVIRONMENT`` once by ``resolve`` (never credentials)."""

    tracking_uri: str = Field(DEFAULT_TRACKING_URI, description="MLflow tracking (and registry) URI")
    ray_address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint; None means AWS S3")
    s3_region: str | None = Field(None, description="S3 region; None means boto3's chain, else us-east-1")
    inception_weights: str | None = Field(None, description="FID Inception weights: path, s3:// or 'torchvision'")
    cache_dir: Path | None = Field(None, description="auto decisions and OpenVINO models; None: ~/.cache/cyclegan "
                                   "of each machine that translates or trains")


class PipelineConfig(StrictModel):
    """Everything one run of the train-cyclegan pipeline needs (what a user writes)."""

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
    # Out of the fingerprint: the watchdog changes training only when a fault happens, and a run whose
    # rollbacks ran out must resume (the same Ray run) with a raised max_rollbacks.
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    force: bool = Field(False, description="retrain even if the champion has this run's fingerprint")

    @field_validator("dataset_uri")
    @classmethod
    def _is_s3_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"dataset_uri must look like s3://bucket/prefix, got {value!r}")
        return value


# What the training fingerprint covers: the fields that change the trained model. Paths, service
# endpoints, local CPU counts, loader processes, checkpointing, registry/eval and watchdog settings do not.
FINGERPRINT_EXCLUDES: dict[str, Any] = {
    "data": {"root", "num_workers", "use_cache"},  # the cache holds the very pixels resize_and_crop makes
}
FINGERPRINT_SECTIONS: tuple[str, ...] = ("model", "train", "data")
FINGERPRINT_SCALING: tuple[str, ...] = ("num_workers", "use_gpu")  # world size and device change the math
FINGERPRINT_RUN: tuple[str, ...] = ("max_steps",)  # a run stopped early is another model


def training_fingerprint(config: PipelineConfig) -> str:
    """sha256 (16 hex digits) of what changes the trained model: model, train and data semantics, the
    number of workers and the device kind, and ``run.max_steps`` (see ``FINGERPRINT_*``)."""
    payload: dict[str, Any] = {
        section: getattr(config, section).model_dump(mode="json", exclude=FINGERPRINT_EXCLUDES.get(section))
        for section in FINGERPRINT_SECTIONS
    }
    payload["scaling"] = {name: getattr(config.scaling, name) for name in FINGERPRINT_SCALING}
    payload["run"] = {name: getattr(config.run, name) for name in FINGERPRINT_RUN}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class ResolvedConfig(PipelineConfig):
    """A PipelineConfig resolved at the entry: absolute paths, ``services`` filled, identity fixed.

    Every stage takes this type; build it with ``resolve``.
    """

    services: Services

    @property
    def fingerprint(self) -> str:
        """The run identity: ``training_fingerprint`` of this config."""
        return training_fingerprint(self)

    def ray_run_name(self, dataset_version: str) -> str:
        """Name of the Ray Train run for this config on one dataset version.

        Ray Train resumes a run with the same name and storage from its latest checkpoint: what a
        retry after a crash needs, and what training on new data or with a new config must not do.
        """
        return f"{self.run.run_name}-{dataset_version[:8]}-{self.fingerprint[:8]}"

    def user_config(self) -> PipelineConfig:
        """The config without ``services`` (what is logged as the run's params and config.yaml)."""
        return PipelineConfig.model_validate(self.model_dump(mode="json", exclude={"services"}))


def services_from_env(env: Mapping[str, str], *, inception_weights: str | None = None) -> Services:
    """The ``Services`` section from ``env`` (``ENVIRONMENT``'s variables; empty values count as unset)."""

    def get(*names: str) -> str | None:
        return next((env[name] for name in names if env.get(name)), None)

    return Services(
        tracking_uri=get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
        ray_address=get("RAY_ADDRESS"),
        s3_endpoint_url=get("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        s3_region=get("AWS_REGION", "AWS_DEFAULT_REGION"),
        inception_weights=inception_weights or get("CYCLEGAN_INCEPTION_WEIGHTS"),
        cache_dir=cache_dir_from_env(env),
    )


def cache_dir_from_env(env: Mapping[str, str]) -> Path | None:
    """``CYCLEGAN_CACHE_DIR`` as an absolute path (None when unset: each machine's own default)."""
    value = env.get("CYCLEGAN_CACHE_DIR")
    return Path(value).expanduser().resolve() if value else None


def inference_choice_from_env(env: Mapping[str, str]) -> tuple[str, str]:
    """``(CYCLEGAN_BACKEND, CYCLEGAN_PRECISION)``, ``auto`` when unset: how MLflow's loading of the registered
    model (which takes no arguments) picks its backend. A bad value raises ValueError naming the variable."""
    from cyclegan_core.inference.backends.interface import check_uncalibrated_choice

    backend, precision = env.get("CYCLEGAN_BACKEND") or "auto", env.get("CYCLEGAN_PRECISION") or "auto"
    try:
        check_uncalibrated_choice(backend, precision, lacking="MLflow's loading has none of")
    except ValueError as exc:
        raise ValueError(f"CYCLEGAN_BACKEND={backend} CYCLEGAN_PRECISION={precision}: {exc}") from None
    return backend, precision


def resolve(config: PipelineConfig, env: Mapping[str, str] | None = None) -> ResolvedConfig:
    """Resolve ``config`` once at the entry (CLI, flow): absolute paths and services from ``env``
    (default ``os.environ``). A ResolvedConfig is returned as it is."""
    if isinstance(config, ResolvedConfig):
        return config
    env = os.environ if env is None else env
    raw = config.model_dump(mode="python")
    raw["cache_dir"] = Path(config.cache_dir).expanduser().resolve()
    raw["output_dir"] = Path(config.output_dir).expanduser().resolve()
    if raw["data"].get("root") is not None:
        raw["data"]["root"] = Path(raw["data"]["root"]).expanduser().resolve()
    if "://" not in config.run.storage_path:
        raw["run"]["storage_path"] = str(Path(config.run.storage_path).expanduser().resolve())
    raw["services"] = services_from_env(env, inception_weights=config.eval.inception_weights)
    return ResolvedConfig.model_validate(raw)


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
