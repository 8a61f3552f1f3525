"""The MLflow pyfunc model: both generators behind ``mlflow.pyfunc`` (a thin wrapper over what
``cyclegan_core.inference.backends.load_translator`` loads), its image codecs, signature and requirements.

The model ships the project packages as ``code_paths``, so ``mlflow.pyfunc.load_model(
"models:/<name>@champion")`` works in any environment with the pip requirements, with or without this
project installed. Input: a DataFrame with a column ``image`` of encoded image bytes (PNG/JPEG; base64
strings and HWC uint8 arrays are accepted too); the param ``direction`` is ``"AtoB"`` (default) or
``"BtoA"``, ``memory_budget`` (e.g. ``"2GiB"``; default: the machine's, see ``cyclegan_core.inference.memory``)
bounds a request's memory (larger images are translated by tiles); output: a DataFrame with a column
``image`` of PNG bytes. ``mlflow models serve`` takes the same column as base64 text in JSON and answers
base64 PNG (README "Serving"); a request it cannot translate raises ``BadRequest``, a 400 there.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from PIL import Image

from cyclegan_core.atomic import scratch_folder
from cyclegan_core.inference.pretrained import DIRECTION_FOLDERS, DIRECTIONS
from pipelines.config import cache_dir_from_env
from pipelines.tracking.experiment import PROJECT_ROOT
from pipelines.tracking.session import global_tracking_uri

CODE_PACKAGES = ("cyclegan_core", "pipelines")
MODEL_NAME_IN_RUN = "model"
GENERATORS_ARTIFACT = "generators"
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "safetensors", "pydantic", "pyyaml", "openvino")


class BadRequest(MlflowException, ValueError):
    """A request the model cannot translate (not an image, unknown direction ...): the scoring server answers
    400 with this message; ``predict`` callers may catch it as the ``ValueError`` it also is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image_value(value: Any, *, row: int) -> Image.Image:
    """One cell of the ``image`` column as an RGB PIL image: encoded bytes, base64 text or HWC uint8."""
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image row {row}: arrays must be HxW or HxWxC (C in 1,3,4) uint8, "
                             f"got {value.dtype} {value.shape}")
        array = value[:, :, 0] if value.ndim == 3 and value.shape[2] == 1 else value
        return Image.fromarray(array).convert("RGB")
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image row {row}: a text value must be base64-encoded image bytes ({exc})") from exc
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"image row {row}: expected PNG/JPEG bytes, base64 text or a uint8 array, "
                        f"got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt input; report them uniformly
        raise ValueError(f"image row {row}: not a readable image ({exc})") from exc


def tiny_png() -> bytes:
    """An 8x8 gradient PNG: the logged input example."""
    ramp = np.linspace(0, 255, 8, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (8, 1)), np.tile(ramp[:, None], (1, 8)), np.full((8, 8), 128, np.uint8)], -1)
    return encode_png(Image.fromarray(pixels))


def model_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema([ColSpec(DataType.binary, "image")]),
        params=ParamSchema([ParamSpec("direction", DataType.string, "AtoB"),
                            ParamSpec("memory_budget", DataType.string, "")]),
    )


class ImageTranslationModel(mlflow.pyfunc.PythonModel):
    """Both CycleGAN generators behind MLflow's pyfunc interface (see the module docstring for I/O)."""

    def load_context(self, context: Any) -> None:
        from cyclegan_core.inference.backends import load_translator
        from pipelines.config import inference_choice_from_env

        # the serving process's entry: auto is torch bf16 on CUDA, the measured fastest path on a CPU;
        # MLflow passes no arguments, so CYCLEGAN_BACKEND / CYCLEGAN_PRECISION may fix the choice
        backend, precision = inference_choice_from_env(os.environ)
        self._translator = load_translator(Path(context.artifacts[GENERATORS_ARTIFACT]), backend=backend,
                                           precision=precision, cache_dir=cache_dir_from_env(os.environ))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        direction = (params or {}).get("direction") or "AtoB"
        try:
            if direction not in DIRECTIONS:
                raise ValueError(f"param direction must be one of {DIRECTIONS}, got {direction!r}")
            if "image" not in model_input.columns:
                raise ValueError(f"input needs a column 'image', got columns {list(model_input.columns)}")
            images = [decode_image_value(value, row=row) for row, value in enumerate(model_input["image"])]
            translator = self._with_budget((params or {}).get("memory_budget"))
        except (ValueError, TypeError) as exc:
            raise BadRequest(str(exc)) from exc
        outputs = translator(images, direction=direction) if images else []
        return pd.DataFrame({"image": [encode_png(image) for image in outputs]})


    def _with_budget(self, budget: str | None) -> Any:
        """The translator, or a copy of it (sharing the generators) with the request's memory budget."""
        if not budget:
            return self._translator
        from cyclegan_core.inference.memory import parse_bytes

        try:
            limit = parse_bytes(budget)
        except ValueError as exc:
            raise ValueError(f"param memory_budget: {exc}") from exc
        translator = copy.copy(self._translator)
        translator.memory_budget = limit
        return translator


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model (explicit: inferring them loads the model in a subprocess)."""
    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def log_pyfunc(model_id: str, generators_dir: Path, *, tracking_uri: str) -> str:
    """Log the pyfunc model (holding the two generator folders, the only copy of them in MLflow) into
    the LoggedModel ``model_id`` (created by the caller, who links it to its run) and mark it READY;
    returns its ``models:/<model_id>`` URI."""
    with scratch_folder("register", name=GENERATORS_ARTIFACT) as tmp:
        # Only the two generator folders go into the model, whatever else generators_dir holds.
        staged = tmp / GENERATORS_ARTIFACT
        for folder in DIRECTION_FOLDERS.values():
            shutil.copytree(generators_dir / folder, staged / folder)
        # No active run: MLflow would copy every run metric at the model's step (system metrics too)
        # into the model; the caller links the model's own metrics.
        with global_tracking_uri(tracking_uri):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                model_id=model_id,
                python_model=ImageTranslationModel(),
                artifacts={GENERATORS_ARTIFACT: str(staged)},
                code_paths=[str(PROJECT_ROOT / package) for package in CODE_PACKAGES],
                signature=model_signature(),
                input_example=(pd.DataFrame({"image": [tiny_png()]}), {"direction": "AtoB"}),
                pip_requirements=pip_requirements(),
            )
    return info.model_uri
