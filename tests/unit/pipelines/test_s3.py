"""pipelines.clients.s3's pure parts: URIs, timestamps, the S3Error mapping, S3 retries and ETag maths."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.utils import parse_timestamp

from pipelines.clients.s3 import (
    S3Error,
    etag_matches,
    multipart_etag,
    parse_s3_timestamp,
    parse_s3_uri,
    part_size_candidates,
    with_retries,
)
from pipelines.retry import RetryPolicy
from tests.unit.pipelines.test_retry import client_error


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


def test_timestamps_parse_fast_and_like_botocore() -> None:
    utc = datetime(2026, 11, 25, 6, 40, 0, 120000, tzinfo=UTC)
    assert parse_s3_timestamp("2026-11-25T06:40:00.120Z") == utc
    assert parse_s3_timestamp("2026-11-25T06:40:00.120Z") == parse_timestamp("2026-11-25T06:40:00.120Z")
    assert parse_s3_timestamp("Wed, 25 Nov 2026 06:40:00 GMT") == utc.replace(microsecond=0)
    assert parse_s3_timestamp(1_700_000_000) == parse_timestamp(1_700_000_000)


def test_with_retries_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    delays: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("SlowDown", 503)
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay_s=0.1)
    assert with_retries(flaky, bucket="b", key="k", sleep=delays.append, policy=policy) == "ok"
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
        with_retries(down, bucket="b", policy=RetryPolicy(attempts=4), sleep=lambda _: None)
    assert len(calls) == 4 and info.value.transient


def test_with_retries_passes_other_errors_through_unwrapped() -> None:
    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as info:
        with_retries(disk_full, bucket="b", key="k", sleep=lambda _: None)
    assert not isinstance(info.value, S3Error)


def test_single_and_multipart_etags_are_recognised(tmp_path: Path) -> None:
    mib = 1 << 20
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * (11 * mib // 256) + b"tail"
    path.write_bytes(data)
    single = hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert etag_matches(path, len(data), f'"{single}"')
    five = multipart_etag(path, 5 * mib)
    assert five.endswith("-3") and etag_matches(path, len(data), f'"{five}"')
    assert etag_matches(path, len(data), multipart_etag(path, 4 * mib))  # whole-MiB sizes are tried too
    assert not etag_matches(path, len(data), five.replace("-3", "-2"))
    assert not etag_matches(path, len(data), "0" * 32 + "-x")
    assert 5 * mib in part_size_candidates(len(data), 3) and 8 * mib not in part_size_candidates(len(data), 3)
