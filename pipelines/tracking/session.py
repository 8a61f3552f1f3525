"""The MLflow session of a registry operation: clients on an explicit tracking URI, retries on
transient failures, the reachability probe, and the scoped global URIs ``mlflow.pyfunc.log_model`` and
the ``models:/`` resolver need (public MLflow APIs only)."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import mlflow
from mlflow.tracking import MlflowClient

from pipelines.retry import RetryPolicy, call_with_retries, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

MLFLOW_RETRY = RetryPolicy(attempts=4, base_delay_s=1.0, max_delay_s=8.0)
PROBE_TIMEOUT_S = 5.0
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# What to do when a basic-auth server (`mlflow server --app-name basic-auth`) refuses a request.
AUTH_FIXES = {
    "UNAUTHENTICATED": "refused the credentials (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                       "to an MLflow user (the pipeline identity, see infra/README.md)",
    "PERMISSION_DENIED": "refused the signed-in user (403): it lacks the permission; the pipeline identity gets it "
                         "from `python -m pipelines.registry.access MODEL`, moving an alias by hand needs the promoter",
}


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the tracking URI / model / version involved.

    ``transient`` is True when retrying later may succeed (tracking server unreachable, overloaded).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def mlflow_client(uri: str) -> MlflowClient:
    """A client whose tracking and registry URIs are both ``uri`` (nothing global is read)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def with_mlflow_retries(fn: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy = MLFLOW_RETRY) -> T:
    """Run ``fn()`` (idempotent) with retries on transient failures; the last transient failure becomes
    a ``RegistryError(transient=True)`` naming ``uri``, other errors pass through."""

    def wrap(exc: BaseException) -> BaseException:
        fix = AUTH_FIXES.get(getattr(exc, "error_code", "")) if isinstance(exc, mlflow.MlflowException) else None
        if fix:
            return RegistryError(f"{what} failed: MLflow tracking server {uri} {fix}")
        if not is_transient(exc) or isinstance(exc, RegistryError):
            return exc
        return RegistryError(
            f"{what} failed against MLflow tracking URI {uri} after {policy.attempts} attempts: {exc}. "
            "Check that the tracking server is up and MLFLOW_TRACKING_URI is right, then retry.",
            transient=True,
        )

    return call_with_retries(fn, what=what, policy=policy, wrap=wrap)


def check_reachable(uri: str, *, policy: RetryPolicy = MLFLOW_RETRY, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast with a clear RegistryError when an http(s) tracking server does not answer /health.

    MLflow's own HTTP retries would otherwise wait minutes per request on a dead server.
    Non-HTTP stores (sqlite, file) need no probe.
    """
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                return  # the server answers (e.g. /health behind auth): reachable
            raise

    def wrap(exc: BaseException) -> BaseException:
        if not isinstance(exc, OSError):  # URLError and HTTPError are OSErrors
            return exc
        return RegistryError(f"MLflow tracking server {uri} is unreachable after {policy.attempts} attempts "
                             f"({exc}). Start it or point MLFLOW_TRACKING_URI at a running server.",
                             transient=True)

    call_with_retries(probe, what=f"probing {url}", policy=policy, wrap=wrap)


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at ``uri`` for the block, then put back the URIs
    and the ``MLFLOW_*_URI`` variables (``mlflow.set_*_uri`` writes them) as they were.

    Only for the fluent APIs that follow the global URIs (``mlflow.pyfunc.log_model``, the ``models:/``
    artifact resolver); everything else takes an explicit ``MlflowClient``.
    """
    saved_tracking, saved_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    saved_env = {name: os.environ.get(name) for name in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        mlflow.set_registry_uri(saved_registry)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
