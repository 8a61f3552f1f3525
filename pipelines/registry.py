"""MLflow logging, model registry and the promotion gate: the last stage of the pipeline.

``register_model`` turns one training result and its evaluation into ONE MLflow run (the typed config
as params, per-epoch and final metrics, lineage tags, sample grids, the resolved config, the raw
generators) holding a pyfunc model that translates images, registers it as a new version of
``config.registry.model_name`` with alias ``challenger``, and applies the gate: the alias ``champion``
moves to the new version when there is no champion yet or when the new version beats the champion on
the primary metric by more than the configured margin. Moving an alias is the only state change the
gate makes; versions are never deleted.

Registration is idempotent: a run and a version carry a ``registration_key`` (train run name +
checkpoint URI + config hash), so a retry reuses what an earlier, possibly interrupted, attempt left
(a finished run without a version, a version whose gate was not applied) instead of duplicating it.

The pyfunc model (``ImageTranslationModel``) ships the project packages as ``code_paths``, so
``mlflow.pyfunc.load_model("models:/<name>@champion")`` works in any environment with the pip
requirements, with or without this project installed. Its input is a DataFrame with a column ``image``
of encoded image bytes (PNG/JPEG; base64 strings and HWC uint8 arrays are accepted too), the param
``direction`` is ``"AtoB"`` (default) or ``"BtoA"``, the output a DataFrame with a column ``image`` of
PNG bytes.

Browse a local store with:
``mlflow ui --backend-store-uri sqlite:///mlruns.db --default-artifact-root ./mlartifacts``
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from PIL import Image

from pipelines.config import DEFAULT_ARTIFACT_ROOT, PipelineConfig, RegistrySettings
from pipelines.config import tracking_uri as default_tracking_uri
from pipelines.records import EvalReport, ModelVersionRef, TrainResult

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
DIRECTIONS = ("AtoB", "BtoA")
GENERATOR_FOLDERS = {"AtoB": "G_AB", "BtoA": "G_BA"}

# MLflow rejects param values longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH); longer
# values are truncated in params, the full config is logged as an artifact.
MAX_PARAM_LENGTH = 6000
PARAM_BATCH = 100  # MLflow's log_batch accepts at most 100 params per call

# Version tags written by register_model (read back by the gate, champion_dataset_version, retries).
TAG_KEY = "registration_key"
TAG_METRIC = "primary_metric"
TAG_METRIC_VALUE = "primary_metric_value"
TAG_GATE = "gate_decision"
TAG_GATE_REASON = "gate_reason"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_PACKAGES = ("cyclegan_core", "pipelines")
MODEL_NAME_IN_RUN = "model"
GENERATORS_ARTIFACT = "generators"

# Model-version search pages; a registered model rarely has more versions than this per page.
SEARCH_PAGE = 200

T = TypeVar("T")


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the tracking URI / model / version involved.

    ``transient`` is True when retrying later may succeed (tracking server unreachable, overloaded).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently registry operations are retried on transient failures."""

    attempts: int = 4
    base_delay_s: float = 1.0
    max_delay_s: float = 8.0
    probe_timeout_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff: base, 2*base, 4*base ... capped at max_delay_s (attempt counts from 0)."""
        return min(self.base_delay_s * 2**attempt, self.max_delay_s)


DEFAULT_RETRY = RetryPolicy()

# MLflow error codes after which the same request may succeed later. (INTERNAL_ERROR is MlflowException's
# default code, used for bugs as much as for outages: its message decides, see _TRANSIENT_TEXT.)
_TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "DEADLINE_EXCEEDED",
}
_TRANSIENT_TEXT = (
    "failed with exception",
    "failed with timeout",
    "max retries exceeded",
    "connection refused",
    "connection reset",
    "temporarily unavailable",
    "database is locked",
    "timed out",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "too many requests",
)


# --- classification and retries -------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is worth retrying later.

    Connection failures, timeouts, HTTP 429/5xx answers and a locked SQLite store are transient; a
    missing model/version, an invalid argument or a bad config are not. Used by the Prefect flow's
    task retry condition.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RegistryError):
            return current.transient
        if isinstance(current, (ConnectionError, TimeoutError, urllib.error.URLError)):
            return True
        if _is_requests_transient(current):
            return True
        if isinstance(current, MlflowException):
            if current.error_code in _TRANSIENT_CODES:
                return True
            if any(text in str(current).lower() for text in _TRANSIENT_TEXT):
                return True
            status = getattr(current, "get_http_status_code", lambda: None)()
            if status in (429, 502, 503, 504):
                return True
        elif "database is locked" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_requests_transient(exc: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # requests ships with mlflow; guard only against stripped environments
        return False
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


def _with_retries(action: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy) -> T:
    """Run ``action``; on a transient failure wait with backoff and run it again (it must be idempotent)."""
    for attempt in range(policy.attempts):
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt + 1 == policy.attempts:
                raise RegistryError(
                    f"{what} failed against MLflow tracking URI {uri} after {policy.attempts} attempts: "
                    f"{exc}. "
                    "Check that the tracking server is up and MLFLOW_TRACKING_URI is right, then retry.",
                    transient=True,
                ) from exc
            delay = policy.delay(attempt)
            log.warning("%s: transient MLflow error (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def check_reachable(uri: str, *, policy: RetryPolicy = DEFAULT_RETRY) -> None:
    """Fail fast with a clear RegistryError when an http(s) tracking server does not answer /health.

    MLflow's own HTTP retries would otherwise wait minutes per request on a dead server.
    Non-HTTP stores (sqlite, file) need no probe.
    """
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    error: Exception | None = None
    for attempt in range(policy.attempts):
        try:
            with urllib.request.urlopen(url, timeout=policy.probe_timeout_s):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                return  # the server answers (e.g. /health behind auth): reachable
            error = exc
        except (urllib.error.URLError, OSError) as exc:
            error = exc
        if attempt + 1 < policy.attempts:
            delay = policy.delay(attempt)
            log.warning("MLflow tracking server %s not reachable (%s); retrying in %.1fs", uri, error, delay)
            time.sleep(delay)
    raise RegistryError(
        f"MLflow tracking server {uri} is unreachable after {policy.attempts} attempts ({error}). "
        "Start it or point MLFLOW_TRACKING_URI at a running server.",
        transient=True,
    )


@contextmanager
def _tracking(uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's global tracking and registry URIs at ``uri`` for the block, then restore them.

    log_model and the models:/ artifact resolver only follow the global URIs. mlflow.set_*_uri also
    write MLFLOW_*_URI into os.environ, so the module state and the environment are restored exactly
    (mlflow's own _use_tracking_uri would unset a user's MLFLOW_TRACKING_URI).
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_tracking, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- pure helpers ---------------------------------------------------------------------------------


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


def registration_key(train: TrainResult) -> str:
    """Identity of one training result: the same result registered twice gets the same key."""
    payload = json.dumps([train.run_name, train.checkpoint_uri, train.config_hash])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def gate(
    challenger_value: float, champion_value: float | None, settings: RegistrySettings, *, metric: str
) -> tuple[bool, str]:
    """Decide whether a challenger replaces the champion. Returns (promote, human-readable reason)."""
    if not math.isfinite(challenger_value):
        return False, f"challenger {metric}={challenger_value} is not a finite number"
    if champion_value is None:
        return True, f"no champion yet; challenger {metric}={challenger_value:.6g} becomes champion"
    if not math.isfinite(champion_value):
        return (
            True,
            f"champion {metric}={champion_value} is not finite; challenger {challenger_value:.6g} wins",
        )
    gain = (
        challenger_value - champion_value if settings.higher_is_better else champion_value - challenger_value
    )
    better = "higher" if settings.higher_is_better else "lower"
    comparison = (
        f"challenger {metric}={challenger_value:.6g} vs champion {champion_value:.6g} "
        f"({better} is better, margin {settings.margin:g})"
    )
    if gain > settings.margin:
        return True, f"{comparison}: challenger wins"
    return False, f"{comparison}: champion stays"


def git_sha(cwd: Path = PROJECT_ROOT) -> str:
    """Commit of the project checkout, or 'unknown' outside a git checkout / without git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


def lineage_tags(train: TrainResult) -> dict[str, str]:
    """Run tags that say where a model came from."""
    return {
        "dataset_uri": train.dataset_uri,
        "dataset_version": train.dataset_version,
        "git_sha": git_sha(),
        "ray_run_name": train.run_name,
        "checkpoint_uri": train.checkpoint_uri,
        "config_hash": train.config_hash,
        TAG_KEY: registration_key(train),
    }


def version_tags(train: TrainResult, report: EvalReport) -> dict[str, str]:
    """Tags every registered version carries (the gate reads the metric back from them)."""
    return {
        "dataset_version": train.dataset_version,
        "dataset_uri": train.dataset_uri,
        TAG_METRIC: report.primary_metric,
        TAG_METRIC_VALUE: repr(float(report.primary_value)),
        "config_hash": train.config_hash,
        "train_run_name": train.run_name,
        "checkpoint_uri": train.checkpoint_uri,
        TAG_KEY: registration_key(train),
    }


# --- the pyfunc model -----------------------------------------------------------------------------


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image_value(value: Any, *, row: int) -> Image.Image:
    """One cell of the ``image`` column as an RGB PIL image: encoded bytes, base64 text or HWC uint8."""
    if isinstance(value, np.ndarray):
        if (
            value.dtype != np.uint8
            or value.ndim not in (2, 3)
            or (value.ndim == 3 and value.shape[2] not in (1, 3, 4))
        ):
            raise ValueError(
                f"image row {row}: arrays must be HxW or HxWxC (C in 1,3,4) uint8, "
                f"got {value.dtype} {value.shape}"
            )
        array = value[:, :, 0] if value.ndim == 3 and value.shape[2] == 1 else value
        return Image.fromarray(array).convert("RGB")
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                f"image row {row}: a text value must be base64-encoded image bytes ({exc})"
            ) from exc
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"image row {row}: expected PNG/JPEG bytes, base64 text or a uint8 array, "
            f"got {type(value).__name__}"
        )
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt input; report them uniformly
        raise ValueError(f"image row {row}: not a readable image ({exc})") from exc


def _tiny_png() -> bytes:
    """An 8x8 gradient PNG: the logged input example."""
    ramp = np.linspace(0, 255, 8, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(ramp, (8, 1)), np.tile(ramp[:, None], (1, 8)), np.full((8, 8), 128, np.uint8)], -1
    )
    return encode_png(Image.fromarray(pixels))


def model_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema([ColSpec(DataType.binary, "image")]),
        params=ParamSchema([ParamSpec("direction", DataType.string, "AtoB")]),
    )


class ImageTranslationModel(mlflow.pyfunc.PythonModel):
    """Both CycleGAN generators behind MLflow's pyfunc interface (see the module docstring for I/O)."""

    def load_context(self, context: Any) -> None:
        import torch

        from cyclegan_core.export import load_generator
        from cyclegan_core.networks import size_multiple

        root = Path(context.artifacts[GENERATORS_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._generators: dict[str, tuple[Any, int]] = {}
        for direction, folder in GENERATOR_FOLDERS.items():
            generator, cfg = load_generator(root / folder, device=device)
            generator.eval()
            self._generators[direction] = (generator, size_multiple(cfg.generator))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from cyclegan_core.translate import translate_images

        direction = (params or {}).get("direction") or "AtoB"
        if direction not in self._generators:
            raise ValueError(f"param direction must be one of {DIRECTIONS}, got {direction!r}")
        if "image" not in model_input.columns:
            raise ValueError(f"input needs a column 'image', got columns {list(model_input.columns)}")
        images = [decode_image_value(value, row=row) for row, value in enumerate(model_input["image"])]
        generator, multiple = self._generators[direction]
        outputs = translate_images(generator, images, multiple=multiple) if images else []
        return pd.DataFrame({"image": [encode_png(image) for image in outputs]})


def _pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model (explicit: inferring them loads the model in a subprocess)."""
    packages = ("mlflow", "torch", "numpy", "pandas", "pillow", "safetensors", "pydantic", "pyyaml")
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


# --- MLflow run logging ---------------------------------------------------------------------------


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Id of the experiment ``name``, created if missing (under ./mlartifacts for a SQLite store)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise RegistryError(
                f"MLflow experiment {name!r} at {uri} is deleted; "
                "restore it in the UI or set registry.experiment to another name"
            )
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # The embedded default keeps artifacts in ./mlartifacts (what `mlflow ui` is told in the README).
        artifact_location = Path(DEFAULT_ARTIFACT_ROOT).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # created concurrently


def _finished_run_id(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """A finished run of an earlier attempt with the same registration key (its model fully logged)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{TAG_KEY} = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def _check_inputs(generators_dir: Path, report: EvalReport) -> None:
    """Refuse early (before any run exists) when the files to log are missing."""
    for name, path in report.artifacts.items():
        if not Path(path).exists():
            raise RegistryError(f"EvalReport.artifacts[{name!r}] = {path} does not exist")
    missing = [f for f in GENERATOR_FOLDERS.values() if not (generators_dir / f / "config.json").is_file()]
    if missing:
        raise RegistryError(
            f"TrainResult.generators_dir {generators_dir} lacks exported generator(s) {missing} "
            "(each needs config.json + model.safetensors; see cyclegan_core.export)"
        )


def _log_run(
    client: MlflowClient, experiment_id: str, config: PipelineConfig, train: TrainResult, report: EvalReport
) -> tuple[str, str]:
    """Log one complete run; returns (run_id, model_uri). The run is FINISHED only once all is logged."""
    from mlflow.entities import Metric, Param

    tags = lineage_tags(train)
    run = client.create_run(experiment_id, run_name=train.run_name, tags=tags)
    run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        for start in range(0, len(params), PARAM_BATCH):
            client.log_batch(run_id, params=params[start : start + PARAM_BATCH])
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"train/{name}", float(value), now, int(entry.get("epoch", epoch)))
            for epoch, entry in enumerate(train.history, start=1)
            for name, value in entry.items()
            if name != "epoch"
        ]
        metrics += [
            Metric(f"train/final/{name}", float(value), now, train.epochs)
            for name, value in train.metrics.items()
        ]
        metrics += [Metric(name, float(value), now, train.epochs) for name, value in report.metrics.items()]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        for name, path in report.artifacts.items():
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=f"eval/{name}")
            else:
                client.log_artifact(run_id, str(path), artifact_path="eval")
        with tempfile.TemporaryDirectory(prefix="cyclegan-register-") as tmp:
            records = Path(tmp) / "records"
            records.mkdir()
            (records / "config.yaml").write_text(
                yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
            )
            (records / "train_result.json").write_text(train.model_dump_json(indent=2))
            (records / "eval_report.json").write_text(report.model_dump_json(indent=2))
            client.log_artifacts(run_id, str(records), artifact_path="records")
        for folder in GENERATOR_FOLDERS.values():
            client.log_artifacts(
                run_id, str(train.generators_dir / folder), artifact_path=f"{GENERATORS_ARTIFACT}/{folder}"
            )
        model_uri = _log_pyfunc(run_id, train.generators_dir)
    except BaseException:
        try:
            client.set_terminated(run_id, status="FAILED")
        except MlflowException as exc:  # the original error matters more than this bookkeeping
            log.warning("could not mark MLflow run %s FAILED: %s", run_id, exc)
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, model_uri


def _log_pyfunc(run_id: str, generators_dir: Path) -> str:
    """Log the pyfunc model in the (fluent) run; returns its model URI."""
    with tempfile.TemporaryDirectory(prefix="cyclegan-generators-") as tmp:
        # Only the two generator folders go into the model, whatever else generators_dir holds.
        staged = Path(tmp) / GENERATORS_ARTIFACT
        for folder in GENERATOR_FOLDERS.values():
            shutil.copytree(generators_dir / folder, staged / folder)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=ImageTranslationModel(),
                artifacts={GENERATORS_ARTIFACT: str(staged)},
                code_paths=[str(PROJECT_ROOT / package) for package in CODE_PACKAGES],
                signature=model_signature(),
                input_example=(pd.DataFrame({"image": [_tiny_png()]}), {"direction": "AtoB"}),
                pip_requirements=_pip_requirements(),
            )
    return info.model_uri


# --- registry -------------------------------------------------------------------------------------


def _versions(client: MlflowClient, name: str, filter_extra: str = "") -> list[ModelVersion]:
    """All versions of ``name`` (optionally narrowed by a filter clause), oldest first."""
    filter_string = f"name = '{name}'" + (f" and {filter_extra}" if filter_extra else "")
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(filter_string, max_results=SEARCH_PAGE, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            break
    return sorted(versions, key=lambda v: int(v.version))


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of a registered model ({} when it does not exist)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="CycleGAN generators (pyfunc: translate images)")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _champion_value(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The champion's value of ``metric``: from its version tags, else from its run's metrics."""
    if version.tags.get(TAG_METRIC) == metric and TAG_METRIC_VALUE in version.tags:
        return float(version.tags[TAG_METRIC_VALUE])
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric)
        if value is not None:
            return float(value)
    return None


def _ref(
    client: MlflowClient, name: str, version: ModelVersion, *, promoted: bool, reason: str
) -> ModelVersionRef:
    aliases = sorted(alias for alias, v in _aliases(client, name).items() if v == str(version.version))
    return ModelVersionRef(
        name=name,
        version=str(version.version),
        run_id=version.run_id or "",
        aliases=aliases,
        promoted=promoted,
        reason=reason,
    )


def _gate_decision(
    client: MlflowClient,
    name: str,
    number: str,
    champion: str | None,
    settings: RegistrySettings,
    report: EvalReport,
) -> tuple[bool, str]:
    """Whether version ``number`` becomes champion, and why."""
    metric = settings.primary_metric
    value = report.metrics.get(metric, report.primary_value if report.primary_metric == metric else None)
    manual = f"promote by hand with `cyclegan promote {name} {number}`"
    if champion == number:
        return True, f"version {number} is already {CHAMPION}"
    if value is None:
        return (
            False,
            f"eval report has no {metric!r} (registry.primary_metric); available: {sorted(report.metrics)}",
        )
    if not settings.auto_promote:
        return False, f"registry.auto_promote is off; {manual}"
    if champion is None:
        return gate(float(value), None, settings, metric=metric)
    champion_value = _champion_value(client, client.get_model_version(name, champion), metric)
    if champion_value is None:
        return False, f"champion version {champion} has no {metric!r} to compare with; {manual}"
    return gate(float(value), champion_value, settings, metric=metric)


def _apply_gate(
    client: MlflowClient, version: ModelVersion, settings: RegistrySettings, report: EvalReport
) -> tuple[bool, str]:
    """Set challenger, decide, move champion if the challenger wins; record the decision on the version."""
    name, number = version.name, str(version.version)
    client.set_registered_model_alias(name, CHALLENGER, number)
    champion = _aliases(client, name).get(CHAMPION)
    promote_it, reason = _gate_decision(client, name, number, champion, settings, report)
    if promote_it and champion != number:
        client.set_registered_model_alias(name, CHAMPION, number)
    # Written last: its presence tells a retry that this version is completely registered.
    client.set_model_version_tag(name, number, TAG_GATE_REASON, reason)
    client.set_model_version_tag(name, number, TAG_GATE, "promoted" if promote_it else "kept_champion")
    return promote_it, reason


def _register_once(
    client: MlflowClient, uri: str, config: PipelineConfig, train: TrainResult, report: EvalReport
) -> ModelVersionRef:
    name = config.registry.model_name
    key = registration_key(train)
    _ensure_registered_model(client, name)
    existing = _versions(client, name, f"tags.{TAG_KEY} = '{key}'")
    if existing:
        version = existing[0]
        if TAG_GATE in version.tags:
            promoted = version.tags[TAG_GATE] == "promoted"
            reason = (
                f"already registered as version {version.version}: {version.tags.get(TAG_GATE_REASON, '')}"
            )
            log.info("model %s: %s", name, reason)
            return _ref(client, name, version, promoted=promoted, reason=reason)
        log.info("model %s: completing half-registered version %s", name, version.version)
    else:
        experiment_id = ensure_experiment(client, config.registry.experiment, uri)
        run_id = _finished_run_id(client, experiment_id, key)
        if run_id is None:
            run_id, model_uri = _log_run(client, experiment_id, config, train, report)
        else:
            log.info("model %s: reusing finished run %s of an earlier attempt", name, run_id)
            model_uri = _run_model_uri(client, run_id)
        version = client.create_model_version(
            name,
            source=model_uri,
            run_id=run_id,
            tags=version_tags(train, report),
            model_id=model_uri.removeprefix("models:/"),
        )
        log.info("model %s: registered version %s from run %s", name, version.version, run_id)
    promoted, reason = _apply_gate(client, version, config.registry, report)
    log.info(
        "model %s version %s: %s (%s)",
        name,
        version.version,
        f"promoted to {CHAMPION}" if promoted else f"{CHAMPION} unchanged",
        reason,
    )
    return _ref(client, name, version, promoted=promoted, reason=reason)


def _run_model_uri(client: MlflowClient, run_id: str) -> str:
    """The models:/<model_id> URI of the pyfunc model logged by a run."""
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise RegistryError(
            f"MLflow run {run_id} is FINISHED but has no logged model; "
            "delete its registration_key tag or register again with a new run name"
        )
    return f"models:/{outputs[-1].model_id}"


def register_model(
    config: PipelineConfig,
    train: TrainResult,
    report: EvalReport,
    *,
    tracking_uri: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> ModelVersionRef:
    """Log the run, register a version (alias challenger) and apply the promotion gate (idempotent).

    Raises RegistryError (``transient=True``) when the tracking server stays unreachable.
    """
    uri = tracking_uri or default_tracking_uri()
    _check_inputs(Path(train.generators_dir), report)
    check_reachable(uri, policy=retry)
    with _tracking(uri) as client:
        return _with_retries(
            lambda: _register_once(client, uri, config, train, report),
            what=f"registering model {config.registry.model_name}",
            uri=uri,
            policy=retry,
        )


def promote(
    name: str,
    version: str | int,
    alias: str = CHAMPION,
    *,
    tracking_uri: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> ModelVersionRef:
    """Point ``alias`` of model ``name`` at ``version`` (what a person does in the UI).

    Raises RegistryError listing the existing models/versions when the target does not exist.
    """
    uri = tracking_uri or default_tracking_uri()
    number = str(version).strip()
    check_reachable(uri, policy=retry)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def move() -> ModelVersionRef:
        if not _model_exists(client, name):
            models = sorted(m.name for m in client.search_registered_models(max_results=100))
            raise RegistryError(f"no registered model {name!r} at {uri}; existing models: {models or 'none'}")
        versions = _versions(client, name)
        by_number = {str(v.version): v for v in versions}
        if number not in by_number:
            raise RegistryError(
                f"model {name!r} has no version {number!r}; existing versions: "
                f"{sorted(by_number, key=int) or 'none'}"
            )
        previous = _aliases(client, name).get(alias)
        client.set_registered_model_alias(name, alias, number)
        reason = (
            f"{alias} moved by hand from version {previous} to {number}"
            if previous
            else f"{alias} set by hand to version {number}"
        )
        log.info("model %s: %s", name, reason)
        return _ref(client, name, by_number[number], promoted=True, reason=reason)

    return _with_retries(move, what=f"promoting {name} version {number}", uri=uri, policy=retry)


def _model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def champion_dataset_version(
    name: str, *, tracking_uri: str | None = None, retry: RetryPolicy = DEFAULT_RETRY
) -> str | None:
    """dataset_version tag of the champion of ``name``; None when there is no model or no champion."""
    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri, policy=retry)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def lookup() -> str | None:
        champion = _aliases(client, name).get(CHAMPION)
        if champion is None:
            return None
        return client.get_model_version(name, champion).tags.get("dataset_version")

    return _with_retries(lookup, what=f"reading the champion of {name}", uri=uri, policy=retry)


def find_generators_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` (itself included) holding both G_AB/ and G_BA/."""
    candidates = [root] + sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: (len(p.parts), str(p))
    )
    for folder in candidates:
        if all((folder / sub).is_dir() for sub in GENERATOR_FOLDERS.values()):
            return folder
    return None


def download_model(
    uri: str, dest: Path, *, tracking_uri: str | None = None, retry: RetryPolicy = DEFAULT_RETRY
) -> Path:
    """Download ``models:/name@alias``, ``models:/name/3`` or ``runs:/<id>/<path>`` into ``dest``.

    Returns the local folder holding ``G_AB/`` and ``G_BA/`` (inside ``dest``). ``dest`` must not exist
    or be empty; the download lands in a temporary sibling first and is renamed into place.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(f"download destination {dest} exists and is not an empty folder")
    tracking = tracking_uri or default_tracking_uri()
    check_reachable(tracking, policy=retry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:

        def fetch() -> str:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(staging), tracking_uri=tracking, registry_uri=tracking
            )

        try:
            with _tracking(tracking):
                _with_retries(fetch, what=f"downloading {uri}", uri=tracking, policy=retry)
        except MlflowException as exc:
            raise RegistryError(f"cannot download {uri} from MLflow at {tracking}: {exc}") from exc
        found = find_generators_folder(staging)
        if found is None:
            raise RegistryError(
                f"{uri} holds no folder with both G_AB/ and G_BA/ (not a CycleGAN model "
                "logged by `cyclegan register`?)"
            )
        relative = found.relative_to(staging)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("downloaded %s to %s", uri, dest / relative)
    return dest / relative
