"""MLflow's scoring contract, read and written the way ``mlflow models serve`` does for the registered
pyfunc (``pipelines.registry.pyfunc``): a JSON request (``dataframe_split``, ``dataframe_records``,
``inputs`` or ``instances``) with an ``image`` column of base64 PNG/JPEG and the params ``direction`` and
``memory_budget``, answered ``{"predictions": [{"image": <base64 PNG>}, ...]}`` in row order; errors are
``{"error_code": ..., "message": ...}`` with MLflow's status codes. Pure functions, no Ray."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_COLUMN = "image"
JSON_TYPE = "application/json"


class ScoringError(Exception):
    """A request answered with an error document: ``status``, MLflow's ``error_code`` and a message."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message

    def document(self) -> bytes:
        return json.dumps({"error_code": self.error_code, "message": self.message}).encode()


def bad_request(message: str) -> ScoringError:
    """What the pyfunc's ``BadRequest`` is in ``mlflow models serve``: a 400 INVALID_PARAMETER_VALUE."""
    return ScoringError(400, "INVALID_PARAMETER_VALUE", message)


def body_too_large(limit: int) -> ScoringError:
    from cyclegan_core.inference.memory import format_bytes

    return ScoringError(413, "REQUEST_LIMIT_EXCEEDED", f"the request body is larger than this server's limit of "
                                                       f"{format_bytes(limit)} ({limit} bytes; `cyclegan serve "
                                                       "--max-body-size`): send fewer or smaller images per request")


def check_length(content_length: str | None, limit: int) -> None:
    """Refuse (413) a declared body length over ``limit`` before reading it."""
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > limit:
        raise body_too_large(limit)


@dataclass(frozen=True)
class Invocation:
    """A parsed request: each row's pixels (HWC uint8 RGB), the direction and the memory budget."""

    images: list[np.ndarray]
    direction: str
    memory_budget: int | None


def translate_options(params: Mapping[str, Any] | None) -> tuple[str, int | None]:
    """``direction`` (default AtoB) and ``memory_budget`` (bytes; None: the replica's) from the params,
    validated as the pyfunc validates them."""
    from cyclegan_core.inference.memory import parse_bytes
    from cyclegan_core.inference.pretrained import DIRECTIONS

    params = params or {}
    direction = params.get("direction") or "AtoB"
    if direction not in DIRECTIONS:
        raise bad_request(f"param direction must be one of {DIRECTIONS}, got {direction!r}")
    budget = params.get("memory_budget")
    if not budget:
        return direction, None
    try:
        return direction, parse_bytes(str(budget))
    except ValueError as exc:
        raise bad_request(f"param memory_budget: {exc}") from exc


def decode_rows(values: Sequence[Any]) -> list[np.ndarray]:
    """Each cell of the ``image`` column as RGB pixels (the pyfunc's decoder and its messages)."""
    from pipelines.registry.pyfunc import decode_image_value

    try:
        return [np.asarray(decode_image_value(value, row=row)) for row, value in enumerate(values)]
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc)) from exc


def parse_invocation(body: bytes, content_type: str | None) -> Invocation:
    """A ``POST /invocations`` body, as ``mlflow models serve`` reads it for this model's signature."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, infer_and_parse_data

    from pipelines.registry.pyfunc import model_signature

    mime, _, parameters = (content_type or "").partition(";")
    if mime.strip().lower() != JSON_TYPE or parameters.strip().lower() not in ("", "charset=utf-8"):
        raise ScoringError(415, "BAD_REQUEST", f"this server takes {JSON_TYPE} (MLflow's scoring JSON: "
                                               f"dataframe_split, dataframe_records, inputs or instances); got "
                                               f"Content-Type {content_type!r}")
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScoringError(
            400, "BAD_REQUEST", f"Ensure that input is a valid JSON formatted string. Error: {exc}"
        ) from exc
    if not isinstance(document, dict):
        raise ScoringError(400, "BAD_REQUEST", "The input must be a JSON dictionary with exactly one of the input "
                                               f"fields {sorted(SUPPORTED_FORMATS)}; got a {type(document).__name__}")
    direction, budget = translate_options(document.get("params"))
    try:
        data = infer_and_parse_data({k: v for k, v in document.items() if k in SUPPORTED_FORMATS},
                                    model_signature().inputs)
    except MlflowException as exc:
        raise ScoringError(exc.get_http_status_code(), str(exc.error_code), exc.message) from exc
    columns = list(data.columns) if hasattr(data, "columns") else list(data)
    if IMAGE_COLUMN not in columns:
        raise bad_request(f"input needs a column 'image', got columns {columns}")
    return Invocation(decode_rows(list(data[IMAGE_COLUMN])), direction, budget)


def parse_image_body(body: bytes, params: Mapping[str, Any]) -> Invocation:
    """A ``POST /translate`` body: the image file's bytes; ``direction``/``memory_budget`` in the query."""
    direction, budget = translate_options(params)
    if not body:
        raise bad_request("the request body is empty: send the image file's bytes (PNG or JPEG)")
    try:
        (image,) = decode_rows([body])
    except ScoringError as exc:
        raise bad_request(exc.message.replace("image row 0: ", "request body: ", 1)) from exc
    return Invocation([image], direction, budget)


def predictions_document(pngs: Sequence[bytes]) -> bytes:
    """The answer ``mlflow models serve`` gives for the pyfunc's output DataFrame of PNG bytes."""
    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json

    buffer = io.StringIO()
    predictions_to_json(pd.DataFrame({IMAGE_COLUMN: list(pngs)}), buffer)
    return buffer.getvalue().encode()
