"""The Prefect events of the promotion path: what the receiver emits and prefect.yaml's triggers
match (``rollout-champion/on-promotion``), and sending them to the Prefect server.

- ``cyclegan.model.alias.moved``: a watched alias now points at a version (payload: model_name, alias,
  version, triggered_by, delivery_id). Its id derives from MLflow's delivery id, so a delivery sent
  twice is one event to Prefect too (its triggers skip an event id they have seen).
- ``cyclegan.model.rollout.reconcile``: compare the recorded rollout with the alias now (no version).

The resource is ``mlflow.model.<name>`` with the alias as a label.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prefect.events import Event

ALIAS_MOVED = "cyclegan.model.alias.moved"
RECONCILE = "cyclegan.model.rollout.reconcile"
EVENT_NAMESPACE = uuid.UUID("6b1d3c52-8f5e-4f0a-9d36-5f3b2c1e7a90")  # fixed: the same delivery, the same id


def resource(model: str, alias: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mlflow.model.{model}", "prefect.resource.name": model,
            "mlflow.alias": alias}


def alias_moved(model: str, alias: str, version: str, delivery_id: str) -> Event:
    """The event of one verified MLflow delivery."""
    payload: dict[str, Any] = {"model_name": model, "alias": alias, "version": version,
                               "triggered_by": f"mlflow-webhook:{delivery_id[:8]}", "delivery_id": delivery_id}
    return Event(event=ALIAS_MOVED, resource=resource(model, alias), payload=payload,
                 id=uuid.uuid5(EVENT_NAMESPACE, f"mlflow-delivery:{delivery_id}"))


def reconcile(model: str, alias: str, *, triggered_by: str) -> Event:
    """A request to reconcile ``model``'s rollout with ``alias`` (each request is a new event)."""
    return Event(event=RECONCILE, resource=resource(model, alias),
                 payload={"model_name": model, "alias": alias, "triggered_by": triggered_by})


def send(*events: Event) -> None:
    """Send ``events`` to the Prefect server of ``PREFECT_API_URL`` now; raises when it cannot be
    reached (the caller answers MLflow 503, so MLflow retries the delivery)."""
    from prefect.events.clients import get_events_client

    async def stream() -> None:
        async with get_events_client(reconnection_attempts=1) as client:
            for event in events:
                await client.emit(event)

    asyncio.run(stream())
