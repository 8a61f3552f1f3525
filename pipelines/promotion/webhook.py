"""Set up the MLflow model-registry webhook that calls the receiver (idempotent: one webhook per
name, created or updated in place).

The MLflow server must be allowed to call the receiver: MLflow 3 sends webhooks to ``https`` URLs
on public addresses only unless the server runs with ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https``
(plain HTTP) and ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true`` (a receiver on a private network, a
compose service name, loopback). It stores the secret encrypted with
``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY`` (a Fernet key): without one each server process makes up its
own and cannot read a secret stored by another or by itself before a restart.
"""

from __future__ import annotations

import logging

from mlflow.entities.webhook import Webhook
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_WEBHOOK_NAME = "cyclegan-promotion"
EVENTS = ["model_version_alias.created"]


def find_webhook(client: MlflowClient, name: str) -> Webhook | None:
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for webhook in page:
            if webhook.name == name:
                return webhook
        token = page.token
        if not token:
            return None


def ensure_webhook(client: MlflowClient, *, url: str, secret: str, name: str = DEFAULT_WEBHOOK_NAME,
                   description: str = "") -> tuple[Webhook, bool]:
    """Create the webhook ``name`` posting alias moves to ``url``, or update it (URL, events, secret,
    ACTIVE); returns (webhook, created)."""
    description = description or "alias moves -> cyclegan promotion receiver -> Prefect rollout"
    existing = find_webhook(client, name)
    if existing is None:
        webhook = client.create_webhook(name=name, url=url, events=EVENTS, description=description,
                                        secret=secret, status="ACTIVE")
        log.info("created MLflow webhook %s (%s) -> %s", name, webhook.webhook_id, url)
        return webhook, True
    webhook = client.update_webhook(existing.webhook_id, url=url, events=EVENTS, description=description,
                                    secret=secret, status="ACTIVE")
    log.info("updated MLflow webhook %s (%s) -> %s", name, webhook.webhook_id, url)
    return webhook, False
