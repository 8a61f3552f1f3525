"""The HTTP routes of ``cyclegan serve`` (a FastAPI ingress deployment): MLflow's scoring server's
``POST /invocations``, ``/ping``, ``/health``, ``/version``, plus ``POST /translate`` (image bytes in, PNG
out) and ``GET /served-version`` (the rollout watcher's record). Each image of a request is one call to
the model replicas, so images of concurrent requests share their batches.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations (``Request``) at
run time, and Serve's ingress wrapper resolves them outside this module's namespace."""

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.serving.scoring import (
    JSON_TYPE,
    Invocation,
    ScoringError,
    body_too_large,
    check_length,
    parse_image_body,
    parse_invocation,
    predictions_document,
)
from pipelines.serving.settings import MODEL_DEPLOYMENT, SERVED_VERSION_PATH, ServeSettings

log = logging.getLogger(__name__)

SCORING_PATHS = ("/invocations", "/ping", "/health", "/version")
STATUS_TTL_S = 1.0  # how long a request may use the watcher's record before asking again
VERSION_HEADER = "X-Model-Version"

api = FastAPI(title="cyclegan serve", docs_url=None, redoc_url=None, openapi_url=None)


def error_response(error: ScoringError) -> Response:
    return Response(error.document(), status_code=error.status, media_type=JSON_TYPE)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    check_length(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@serve.ingress(api)
class Front:
    """The ingress replica: parses and answers requests; the model replicas translate."""

    def __init__(self, settings: ServeSettings, watcher: DeploymentHandle) -> None:
        self.settings, self.watcher = settings, watcher
        self._model: DeploymentHandle | None = None
        self._status: tuple[float, dict[str, Any]] | None = None

    async def served(self, *, fresh: bool = False) -> dict[str, Any]:
        """The watcher's record (cached for STATUS_TTL_S: requests must not queue on the one watcher)."""
        if fresh or self._status is None or time.monotonic() - self._status[0] > STATUS_TTL_S:
            self._status = (time.monotonic(), await self.watcher.status.remote())
        return self._status[1]

    async def model(self) -> DeploymentHandle:
        """The model replicas' handle; 503 while no version serves."""
        status = await self.served()
        if status["version"] is None:
            raise ScoringError(503, "TEMPORARILY_UNAVAILABLE", f"no version of {self.settings.model} serves yet: "
                                                               f"{status['state']}")
        if self._model is None:
            self._model = await asyncio.to_thread(serve.get_deployment_handle, MODEL_DEPLOYMENT,
                                                  self.settings.model_app_name)
        return self._model

    async def translate(self, invocation: Invocation) -> tuple[list[bytes], str]:
        """Each image through the model replicas; (PNGs in order, the versions that answered)."""
        model = await self.model()
        answers = await asyncio.gather(*(model.translate.remote(image, invocation.direction, invocation.memory_budget)
                                         for image in invocation.images))
        for answer in answers:
            if answer.error is not None:
                if answer.client_error:
                    raise ScoringError(400, "INVALID_PARAMETER_VALUE", answer.error)
                raise ScoringError(500, "INTERNAL_ERROR", answer.error)
        return [answer.png for answer in answers], ",".join(sorted({answer.version for answer in answers}))

    @api.post("/invocations")
    async def invocations(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            invocation = await asyncio.to_thread(parse_invocation, body, request.headers.get("content-type"))
            pngs, versions = await self.translate(invocation)
            document = await asyncio.to_thread(predictions_document, pngs)
        except ScoringError as error:
            return error_response(error)
        return Response(document, media_type=JSON_TYPE, headers={VERSION_HEADER: versions})

    @api.post("/translate")
    async def translate_image(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            invocation = await asyncio.to_thread(parse_image_body, body, dict(request.query_params))
            (png,), versions = await self.translate(invocation)
        except ScoringError as error:
            return error_response(error)
        return Response(png, media_type="image/png", headers={VERSION_HEADER: versions})

    @api.get("/ping")
    @api.get("/health")
    async def ping(self) -> Response:
        """200 while a version serves (as MLflow's scoring server once its model loaded), else 503."""
        status = await self.served(fresh=True)
        if status["version"] is None:
            return error_response(ScoringError(503, "TEMPORARILY_UNAVAILABLE", status["state"]))
        return Response("\n", media_type=JSON_TYPE)

    @api.get("/version")
    async def version(self) -> Response:
        """The MLflow version, as MLflow's scoring server answers."""
        from mlflow.version import VERSION

        return Response(VERSION, media_type=JSON_TYPE)

    @api.get(SERVED_VERSION_PATH)
    async def served_version(self) -> Response:
        return Response(json.dumps(await self.served(fresh=True)), media_type=JSON_TYPE)
