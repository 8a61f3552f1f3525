"""MLflow webhook signatures and replay protection (pure, no I/O).

MLflow 3 signs a delivery as Standard Webhooks do (``mlflow/webhooks/delivery.py``): header
``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">`` with the
webhook's secret, ``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Delivery-Id`` (a UUID per
delivery; MLflow's own retries of it repeat the same headers).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Mapping
from dataclasses import dataclass

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
REPLAY_WINDOW_S = 300  # Standard Webhooks' default tolerance


class Refused(Exception):
    """A delivery the receiver refuses; ``status`` is the HTTP status it answers, the message the
    logged reason (never the secret or the signature)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery."""
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class Delivery:
    """The signed facts of one delivery, once verified."""

    delivery_id: str
    timestamp: int


def header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, case-insensitively ('' when absent)."""
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), "")


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float,
           window_s: int = REPLAY_WINDOW_S) -> Delivery:
    """Check a delivery's signature and timestamp; raise ``Refused`` naming what is wrong."""
    delivery_id, timestamp, signature = (header(headers, name) for name in
                                         (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    missing = [name for name, value in ((DELIVERY_ID_HEADER, delivery_id), (TIMESTAMP_HEADER, timestamp),
                                        (SIGNATURE_HEADER, signature)) if not value]
    if missing:
        raise Refused(401, f"missing header(s) {', '.join(missing)}: not a signed MLflow webhook delivery")
    if not timestamp.isdigit():
        raise Refused(401, f"{TIMESTAMP_HEADER} is not Unix seconds")
    expected = sign(secret, delivery_id, timestamp, body)
    # Several signatures may be sent space-separated (secret rotation); any valid one counts.
    if not any(hmac.compare_digest(expected, candidate) for candidate in signature.split()):
        raise Refused(401, f"delivery {delivery_id}: wrong signature (is the webhook's secret the receiver's?)")
    age = now - int(timestamp)
    if abs(age) > window_s:
        raise Refused(401, f"delivery {delivery_id}: timestamp {age:.0f} s from now, outside the "
                           f"{window_s} s replay window")
    return Delivery(delivery_id, int(timestamp))


class DeliveryLedger:
    """Delivery IDs already acted on, kept for the replay window (an older one is refused by its
    timestamp anyway): a repeated ID is a replay or a duplicate delivery and changes nothing.

    ``claim`` before acting; ``release`` when acting failed, so that MLflow's retry may claim it."""

    def __init__(self, window_s: int = REPLAY_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, delivery: Delivery, *, now: float) -> bool:
        """True when this delivery ID is new (and is now held); False for a repeat."""
        with self._lock:
            horizon = now - 2 * self.window_s
            for stale in [key for key, seen_at in self._seen.items() if seen_at < horizon]:
                del self._seen[stale]
            if delivery.delivery_id in self._seen:
                return False
            self._seen[delivery.delivery_id] = now
            return True

    def release(self, delivery: Delivery) -> None:
        with self._lock:
            self._seen.pop(delivery.delivery_id, None)
