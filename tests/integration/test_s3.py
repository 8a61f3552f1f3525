"""pipelines.s3 against a real moto S3 server: URIs, client construction, error classification, retries."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, SSLError
from botocore.utils import parse_timestamp

from pipelines.s3 import (
    S3Error,
    is_transient,
    make_s3_client,
    parse_s3_timestamp,
    parse_s3_uri,
    resolve_endpoint_url,
    with_retries,
)
from tests.integration.faulty_proxy import FaultyProxy


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/prefix/data", ("bucket", "prefix/data")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket//x/", ("bucket", "x/")),
    ],
)
def test_parse_s3_uri_splits_bucket_and_prefix(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["/local/path", "http://bucket/x", "s3://", "s3:///prefix", "bucket/prefix", ""])
def test_parse_s3_uri_rejects_non_s3_uris_clearly(uri: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        parse_s3_uri(uri)


def test_client_honours_aws_endpoint_url_and_explicit_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_s3_client().meta.endpoint_url == s3_server
    assert resolve_endpoint_url() == s3_server
    explicit = make_s3_client(endpoint_url="http://127.0.0.1:9", region="eu-west-3", max_pool_connections=7)
    assert explicit.meta.endpoint_url == "http://127.0.0.1:9"
    assert explicit.meta.region_name == "eu-west-3"
    assert explicit.meta.config.max_pool_connections == 7
    assert explicit.meta.config.retries["mode"] == "standard"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert resolve_endpoint_url() is None


def test_timestamps_parse_fast_and_like_botocore() -> None:
    utc = datetime(2026, 11, 25, 6, 40, 0, 120000, tzinfo=UTC)
    assert parse_s3_timestamp("2026-11-25T06:40:00.120Z") == utc
    assert parse_s3_timestamp("2026-11-25T06:40:00.120Z") == parse_timestamp("2026-11-25T06:40:00.120Z")
    assert parse_s3_timestamp("Wed, 25 Nov 2026 06:40:00 GMT") == utc.replace(microsecond=0)
    assert parse_s3_timestamp(1_700_000_000) == parse_timestamp(1_700_000_000)


def test_listing_timestamps_are_timezone_aware(s3_bucket: str) -> None:
    client = make_s3_client()
    client.put_object(Bucket=s3_bucket, Key="stamp/a.txt", Body=b"a")
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="stamp/")["Contents"][0]["LastModified"]
    head = client.head_object(Bucket=s3_bucket, Key="stamp/a.txt")["LastModified"]
    assert listed.tzinfo is not None and abs((listed - head).total_seconds()) < 2


def test_error_classification() -> None:
    for code, status in [("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503),
                         ("Throttling", 400), ("502", 502), ("RequestTimeout", 400)]:
        assert is_transient(client_error(code, status)), code
    for code, status in [("NoSuchBucket", 404), ("AccessDenied", 403), ("InvalidAccessKeyId", 403),
                         ("NoSuchKey", 404), ("SignatureDoesNotMatch", 403)]:
        assert not is_transient(client_error(code, status)), code
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(SSLError(endpoint_url="http://x", error="bad cert"))
    assert not is_transient(ValueError("not an S3 error"))


def test_with_retries_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    delays: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("SlowDown", 503)
        return "ok"

    assert with_retries(flaky, bucket="b", key="k", sleep=delays.append, base_delay_s=0.1) == "ok"
    assert len(calls) == 3
    assert len(delays) == 2 and all(0 <= d <= 0.2 for d in delays)


def test_with_retries_fails_fast_on_permanent_errors() -> None:
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(S3Error, match=r"s3://b/k.*AccessDenied.*permission") as info:
        with_retries(denied, bucket="b", key="k", sleep=lambda _: None)
    assert len(calls) == 1
    assert info.value.bucket == "b" and info.value.key == "k" and not info.value.transient


def test_with_retries_gives_up_after_attempts() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise client_error("ServiceUnavailable", 503)

    with pytest.raises(S3Error, match="ServiceUnavailable") as info:
        with_retries(down, bucket="b", attempts=4, sleep=lambda _: None)
    assert len(calls) == 4 and info.value.transient


def test_missing_bucket_fails_fast_with_a_clear_message(s3_server: str) -> None:
    client = make_s3_client()
    start = time.perf_counter()
    with pytest.raises(S3Error, match=r"s3://no-such-bucket-here.*NoSuchBucket.*bucket name") as info:
        with_retries(lambda: client.list_objects_v2(Bucket="no-such-bucket-here"), bucket="no-such-bucket-here",
                     action="list")
    assert time.perf_counter() - start < 2.0
    assert info.value.code == "NoSuchBucket"


def test_unreachable_endpoint_is_transient_and_named(s3_server: str) -> None:
    client = make_s3_client(endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout=1)
    with pytest.raises(S3Error, match="s3://b.*reachable") as info:
        with_retries(lambda: client.list_objects_v2(Bucket="b"), bucket="b", attempts=2, base_delay_s=0.01)
    assert info.value.transient


def test_reads_survive_503s_resets_and_truncated_bodies(s3_server: str, s3_bucket: str) -> None:
    direct = make_s3_client()
    payloads = {f"k{i}": bytes([i]) * (1000 + i) for i in range(6)}
    for key, data in payloads.items():
        direct.put_object(Bucket=s3_bucket, Key=key, Body=data)
    with FaultyProxy(s3_server, fail_every=3, drop_every=7, truncate_every=5) as proxy:
        client = make_s3_client(endpoint_url=proxy.url)

        def read(key: str) -> bytes:
            return with_retries(lambda: client.get_object(Bucket=s3_bucket, Key=key)["Body"].read(),
                                bucket=s3_bucket, key=key, base_delay_s=0.01)

        assert {key: read(key) for key in payloads} == payloads
    assert proxy.faults["503"] > 0 and proxy.faults["drop"] > 0 and proxy.faults["truncate"] > 0
