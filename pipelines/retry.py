"""One retry policy and one transient-error classifier for the whole pipeline.

``is_transient`` says whether a failure may go away if the same request is made again (connection and
timeout errors, HTTP 429/5xx, S3 throttling, an unreachable or locked MLflow store, a lost Ray actor);
S3 access, MLflow calls and the Prefect flow's ``retry_condition_fn`` all ask it. ``call_with_retries``
re-runs an idempotent call on transient failures with exponential backoff and full jitter.
"""

from __future__ import annotations

import logging
import random
import ssl
import sys
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets and how long to wait between them (full jitter backoff)."""

    attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"RetryPolicy delays must be >= 0, got base_delay_s={self.base_delay_s}, "
                             f"max_delay_s={self.max_delay_s}")

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 0): uniform in [0, min(max, base * 2**attempt)]
        (AWS Architecture Blog, "Exponential Backoff And Jitter": full jitter)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** attempt))
        return (rng or random).uniform(0.0, ceiling)


# S3 error codes that mean "try again later" (AWS S3 error responses + botocore's throttling list).
TRANSIENT_S3_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "ThrottledException", "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "EC2ThrottledException",
})

# MLflow error codes after which the same request may succeed later. (INTERNAL_ERROR is MlflowException's
# default code, used for bugs as much as for outages: its message decides, see TRANSIENT_MLFLOW_TEXT.)
TRANSIENT_MLFLOW_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "DEADLINE_EXCEEDED",
})
TRANSIENT_MLFLOW_TEXT = (
    "failed with exception", "failed with timeout", "max retries exceeded", "connection refused",
    "connection reset", "temporarily unavailable", "database is locked", "timed out", "bad gateway",
    "service unavailable", "gateway timeout", "too many requests",
)
TRANSIENT_HTTP_STATUSES = frozenset({429, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from (``__cause__``/``__context__``), is worth
    retrying later. An exception with a boolean ``transient`` attribute (``S3Error``, ``RegistryError``)
    decides for itself; certificate errors and permanent S3 answers are never transient."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def _classify(exc: BaseException) -> bool | None:
    """True/False when ``exc`` itself decides, None to look at what it was raised from.

    A library's exception types are only looked up when the library is already imported: an exception
    of a module nobody imported cannot exist, and classifying must not import mlflow or ray.
    """
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    if _is_certificate_error(exc):
        return False  # certificate problems do not fix themselves
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None and isinstance(exc, botocore.ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return s3_error_code(exc) in TRANSIENT_S3_CODES or status >= 500 or status == 429
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    mlflow = sys.modules.get("mlflow.exceptions")
    if mlflow is not None and isinstance(exc, mlflow.MlflowException):
        status = exc.get_http_status_code() if hasattr(exc, "get_http_status_code") else None
        if (exc.error_code in TRANSIENT_MLFLOW_CODES or status in TRANSIENT_HTTP_STATUSES
                or any(text in str(exc).lower() for text in TRANSIENT_MLFLOW_TEXT)):
            return True
        return None
    if isinstance(exc, (ConnectionError, TimeoutError, urllib.error.URLError)):
        return True
    if isinstance(exc, _loaded_transient_types()):
        return True
    if "database is locked" in str(exc).lower():  # sqlite3.OperationalError of a busy SQLite store
        return True
    return None


def _is_certificate_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    botocore = sys.modules.get("botocore.exceptions")
    requests = sys.modules.get("requests.exceptions")
    return (botocore is not None and isinstance(exc, botocore.SSLError)) or (
        requests is not None and isinstance(exc, requests.SSLError))


def _loaded_transient_types() -> tuple[type[BaseException], ...]:
    """Connection/timeout exception types of the imported client libraries (botocore, requests, Ray)."""
    types: list[type[BaseException]] = []
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        types += [
            botocore.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
            botocore.ConnectionClosedError,
            botocore.ReadTimeoutError,
            botocore.ResponseStreamingError,  # the body stream broke mid-read (urllib3 ProtocolError)
            botocore.IncompleteReadError,  # the body ended before Content-Length bytes
        ]
    requests = sys.modules.get("requests.exceptions")
    if requests is not None:
        types += [requests.ConnectionError, requests.Timeout]
    ray = sys.modules.get("ray.exceptions")
    if ray is not None:
        types += [ray.RaySystemError, ray.RayActorError]  # a lost worker, node or cluster connection
    return tuple(types)


def s3_error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else); a bare HTTP status becomes
    e.g. '503'."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str((response.get("Error", {}) or {}).get("Code") or "")
    if not code or code.isdigit():
        code = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or code)
    return code


def call_with_retries(fn: Callable[[], T], *, what: str, policy: RetryPolicy,
                      wrap: Callable[[BaseException], BaseException] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``fn()``; on a transient failure wait ``policy.delay`` and run it again, up to
    ``policy.attempts`` times. ``fn`` must be idempotent (it is re-run from scratch).

    What escapes (a permanent failure, or the last transient one) goes through ``wrap`` when given:
    it returns the exception to raise instead (chained from the original) or the original itself.
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if is_transient(exc) and attempt + 1 < policy.attempts:
                delay = policy.delay(attempt)
                log.debug("%s: transient error (%s: %s), retry %d/%d in %.2fs", what, type(exc).__name__,
                          exc, attempt + 1, policy.attempts - 1, delay)
                sleep(delay)
                continue
            wrapped = wrap(exc) if wrap is not None else exc
            if wrapped is exc:
                raise
            raise wrapped from exc
    raise AssertionError("unreachable: the loop returns or raises")
