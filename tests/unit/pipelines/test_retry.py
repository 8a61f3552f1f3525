"""pipelines.retry: the one transient classifier (S3, MLflow, Ray, network) and the retry policy."""

from __future__ import annotations

import random
import subprocess
import sys
import urllib.error

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, SSLError
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)
from ray.exceptions import RayActorError, RaySystemError

from pipelines.clients.s3 import S3Error
from pipelines.ingest import IngestError
from pipelines.registry import RegistryError
from pipelines.retry import RetryPolicy, call_with_retries, is_transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize(("code", "status"), [("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503),
                                              ("Throttling", 400), ("502", 502), ("RequestTimeout", 400),
                                              ("", 429)])
def test_s3_throttling_and_server_errors_are_transient(code: str, status: int) -> None:
    assert is_transient(client_error(code, status))


@pytest.mark.parametrize(("code", "status"), [("NoSuchBucket", 404), ("AccessDenied", 403),
                                              ("InvalidAccessKeyId", 403), ("NoSuchKey", 404),
                                              ("SignatureDoesNotMatch", 403)])
def test_permanent_s3_answers_are_not_transient(code: str, status: int) -> None:
    assert not is_transient(client_error(code, status))


def test_connection_errors_are_transient_certificate_errors_are_not() -> None:
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(ConnectionResetError())
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError("read timed out"))
    assert not is_transient(SSLError(endpoint_url="http://x", error="bad cert"))
    assert not is_transient(ValueError("not an S3 error"))


def test_mlflow_outages_are_transient_missing_objects_are_not() -> None:
    assert is_transient(MlflowException("API request to http://x/api failed with exception Max retries exceeded"))
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not is_transient(MlflowException("no such model", error_code="RESOURCE_DOES_NOT_EXIST"))
    assert not is_transient(MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(MlflowException("invalid value", error_code=INVALID_PARAMETER_VALUE))


def test_http_errors_are_transient_only_for_429_and_5xx() -> None:
    def http_error(status: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("http://x/health", status, "status", None, None)  # type: ignore[arg-type]

    assert is_transient(http_error(503)) and is_transient(http_error(429))
    assert not is_transient(http_error(404)) and not is_transient(http_error(401))
    assert is_transient(urllib.error.URLError(ConnectionRefusedError()))


def test_a_lost_ray_worker_or_cluster_is_transient() -> None:
    assert is_transient(RayActorError())
    assert is_transient(RaySystemError("GCS unreachable"))


def test_errors_that_say_so_decide_for_themselves() -> None:
    assert is_transient(RegistryError("down", transient=True))
    assert not is_transient(RegistryError("model 'm' has no version '9'"))
    assert is_transient(S3Error("503 SlowDown", bucket="b", code="SlowDown", transient=True))
    assert not is_transient(S3Error("NoSuchBucket", bucket="b", code="NoSuchBucket"))
    assert not is_transient(IngestError("s3://b/x has no trainB/ images"))


def test_the_cause_chain_is_followed() -> None:
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as exc:
            raise RuntimeError("while reading the manifest") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError:
            raise RegistryError("no such model") from None
    except RegistryError as explicit:
        assert not is_transient(explicit)  # its own ``transient`` decides


def test_classifying_imports_neither_mlflow_nor_ray() -> None:
    script = ("import sys; from pipelines.clients.s3 import S3Error; from pipelines.retry import is_transient; "
              "assert is_transient(ConnectionResetError()) and not is_transient(ValueError()); "
              "print(sorted(m for m in ('mlflow', 'ray', 'prefect') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_full_jitter_delays_stay_under_the_capped_exponential() -> None:
    policy = RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=3.0)
    rng = random.Random(0)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays) and max(delays) > ceiling * 0.8
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)


def test_call_with_retries_retries_transient_failures_then_succeeds() -> None:
    calls: list[int] = []
    delays: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    policy = RetryPolicy(attempts=4, base_delay_s=0.1, max_delay_s=1.0)
    assert call_with_retries(flaky, what="flaky", policy=policy, sleep=delays.append) == "ok"
    assert len(calls) == 3 and len(delays) == 2 and 0 <= delays[0] <= 0.1 and 0 <= delays[1] <= 0.2


def test_call_with_retries_fails_fast_on_permanent_errors_and_wraps_the_last_one() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        call_with_retries(broken, what="broken", policy=RetryPolicy(attempts=5), sleep=lambda _: None)
    assert len(calls) == 1

    def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("refused")

    def wrap(exc: BaseException) -> BaseException:
        return RuntimeError(f"gave up: {exc}")

    calls.clear()
    with pytest.raises(RuntimeError, match="gave up: refused") as info:
        call_with_retries(down, what="down", policy=RetryPolicy(attempts=3), wrap=wrap, sleep=lambda _: None)
    assert len(calls) == 3 and isinstance(info.value.__cause__, ConnectionRefusedError)
