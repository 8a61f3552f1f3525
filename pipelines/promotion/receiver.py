"""The MLflow webhook receiver: a Starlette app on uvicorn that turns a verified
``model_version_alias.created`` delivery about a watched model and alias into a Prefect event
(``pipelines.promotion.events``).

``POST /mlflow-webhook``: signature (``signature.verify``), replay window and repeated delivery ids
(``DeliveryLedger``), then the payload; every refusal is logged with its reason (never the secret or
the signature) and changes nothing. ``GET /health``. On start it asks for a reconciliation of every
watched model and alias, so a move made while it was down still rolls out.

    python -m pipelines.promotion.receiver      # or: cyclegan receiver --port 8091
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from prefect.events import Event
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipelines.promotion import events
from pipelines.promotion.settings import ReceiverSettings, receiver_settings_from_env
from pipelines.promotion.signature import DeliveryLedger, Refused, verify

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/mlflow-webhook"
MAX_BODY_BYTES = 64 * 1024
SERVER_NAME = "cyclegan-promotion-receiver"
ALIAS_EVENT = ("model_version_alias", "created")  # (entity, action) of MLflow's payload

Sender = Callable[..., None]


@dataclass(frozen=True)
class Outcome:
    """What a delivery came to: the HTTP status answered and why."""

    status: int
    message: str
    event: Event | None = None


def parse_alias_payload(body: bytes) -> tuple[str, str, str] | str:
    """(model, alias, version) of a ``model_version_alias.created`` body, or why it is not one."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"body is not JSON ({exc})"
    if not isinstance(document, dict):
        return "body is not a JSON object"
    kind = (document.get("entity"), document.get("action"))
    if kind != ALIAS_EVENT:
        return f"event {kind[0]}.{kind[1]} is not model_version_alias.created"
    data = document.get("data")
    fields = [data.get(key) if isinstance(data, dict) else None for key in ("name", "alias", "version")]
    if not all(isinstance(value, str) and value for value in fields):
        return "data needs string fields name, alias and version"
    model, alias, version = fields
    if not version.isdigit():
        return f"version {version!r} is not a version number"
    return model, alias, version


class Receiver:
    """The receiver's decisions, apart from HTTP (``handle`` is what one POST does)."""

    def __init__(self, settings: ReceiverSettings, *, send: Sender = events.send,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.send = send
        self.clock = clock
        self.ledger = DeliveryLedger(settings.replay_window_s)

    def handle(self, headers: Mapping[str, str], body: bytes) -> Outcome:
        now = self.clock()
        try:
            delivery = verify(self.settings.secret.get_secret_value(), headers, body, now=now,
                              window_s=self.settings.replay_window_s)
        except Refused as refused:
            return self.refuse(refused.status, refused.reason)
        parsed = parse_alias_payload(body)
        if isinstance(parsed, str):
            return self.refuse(HTTPStatus.BAD_REQUEST, f"delivery {delivery.delivery_id}: {parsed}")
        model, alias, version = parsed
        if not self.settings.watches(model, alias):
            message = (f"delivery {delivery.delivery_id}: {model}@{alias} -> v{version} is not watched "
                       f"(models {list(self.settings.models)}, aliases {list(self.settings.aliases)}); ignored")
            log.warning("refused: %s", message)
            return Outcome(HTTPStatus.OK, message)  # a genuine delivery: MLflow need not retry it
        if not self.ledger.claim(delivery, now=now):
            return self.refuse(HTTPStatus.CONFLICT, f"delivery {delivery.delivery_id} was already received "
                                                    "(a replay or a duplicate); nothing done")
        event = events.alias_moved(model, alias, version, delivery.delivery_id)
        try:
            self.send(event)
        except Exception as exc:  # noqa: BLE001 - any failure to reach Prefect: MLflow retries on 503
            self.ledger.release(delivery)
            log.error("delivery %s: %s@%s -> v%s could not be sent to Prefect (%s: %s); answering 503 so "
                      "MLflow retries, the scheduled reconciliation catches up otherwise",
                      delivery.delivery_id, model, alias, version, type(exc).__name__, exc)
            return Outcome(HTTPStatus.SERVICE_UNAVAILABLE, "Prefect unreachable; retry")
        message = f"{model}@{alias} -> v{version}: event {events.ALIAS_MOVED} {event.id} sent"
        log.info("delivery %s: %s", delivery.delivery_id, message)
        return Outcome(HTTPStatus.OK, message, event)

    def refuse(self, status: int, reason: str) -> Outcome:
        log.warning("refused (%d): %s", int(status), reason)
        return Outcome(int(status), reason)

    def reconcile_all(self, *, triggered_by: str) -> int:
        """Ask for a reconciliation of every watched model and alias; returns how many were sent
        (0 when Prefect is unreachable: logged, the schedule reconciles later)."""
        requests = [events.reconcile(model, alias, triggered_by=triggered_by)
                    for model in self.settings.models for alias in self.settings.aliases]
        try:
            self.send(*requests)
        except Exception as exc:  # noqa: BLE001
            log.error("could not ask Prefect to reconcile %s (%s: %s); the scheduled reconciliation will",
                      [r.resource.id for r in requests], type(exc).__name__, exc)
            return 0
        log.info("asked Prefect to reconcile %s", ", ".join(f"{r.payload['model_name']}@{r.payload['alias']}"
                                                            for r in requests))
        return len(requests)


def receiver_app(receiver: Receiver) -> Starlette:
    """The receiver's routes: ``POST /mlflow-webhook``, ``GET /health``; any other path is a JSON 404."""

    async def health(request: Request) -> Response:
        return answer(HTTPStatus.OK, {"status": "ok", "models": list(receiver.settings.models),
                                      "aliases": list(receiver.settings.aliases)})

    async def webhook(request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:  # refused before the body is read
            outcome = receiver.refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length.isdigit()
                                      else HTTPStatus.LENGTH_REQUIRED,
                                      f"body of {length or 'unknown'} bytes (at most {MAX_BODY_BYTES})")
        else:
            body = await request.body()
            # Prefect's event client blocks: off the event loop
            outcome = await run_in_threadpool(receiver.handle, request.headers, body)
        return answer(outcome.status, {"status": int(outcome.status), "message": outcome.message})

    async def not_found(request: Request) -> Response:
        if request.method == "POST":
            return answer(HTTPStatus.NOT_FOUND, {"error": f"POST to {WEBHOOK_PATH}"})
        return answer(HTTPStatus.NOT_FOUND, {"error": f"no such path; POST {WEBHOOK_PATH} or GET /health"})

    return Starlette(routes=[Route("/health", health, methods=["GET"]),
                             Route(WEBHOOK_PATH, webhook, methods=["POST"]),
                             Route("/{path:path}", not_found, methods=["GET", "POST"])])


def answer(status: int, document: dict[str, Any]) -> Response:
    return Response(json.dumps(document), status_code=int(status), media_type="application/json")


def server_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """uvicorn for the receiver: the process's own logging (no access lines), no lifespan."""
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
                          server_header=False, headers=[("server", SERVER_NAME)])


def serve(settings: ReceiverSettings, *, send: Sender = events.send) -> None:
    """Run the receiver until SIGINT or SIGTERM; either shuts it down gracefully (uvicorn lets the
    requests in flight finish). The port is bound first: a busy port is an error before anything is sent."""
    receiver = Receiver(settings, send=send)
    listener = socket.create_server((settings.host, settings.port))
    host, port = listener.getsockname()[:2]
    log.info("receiver listening on http://%s:%s%s for %s (aliases %s)", host, port, WEBHOOK_PATH,
             ", ".join(settings.models), ", ".join(settings.aliases))
    if settings.reconcile_on_start:
        receiver.reconcile_all(triggered_by="receiver-start")
    server = uvicorn.Server(server_config(receiver_app(receiver), host, port))
    # uvicorn re-raises the signal that stopped it once it has shut down: SIGTERM, as SIGINT, then ends here
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        listener.close()
        log.info("receiver stopped")


def main() -> None:
    """``python -m pipelines.promotion.receiver``: settings from the environment only (the containers'
    entry); a bad setting is one error line and exit 4, as ``cyclegan receiver`` refuses it."""
    import sys

    from pydantic import ValidationError

    from pipelines.promotion.settings import PromotionError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not os.environ.get("PREFECT_API_URL"):
            raise PromotionError("PREFECT_API_URL is not set: the receiver sends its events to a Prefect server")
        settings = receiver_settings_from_env(os.environ, host=os.environ.get("CYCLEGAN_RECEIVER_HOST"),
                                              port=os.environ.get("CYCLEGAN_RECEIVER_PORT"))
    except (PromotionError, ValidationError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(4) from None
    serve(settings)


if __name__ == "__main__":
    main()
