"""pipelines.clients.s3 against a real moto S3 server: client construction, listing, errors, retries through a
faulty network."""

from __future__ import annotations

import time

import pytest

from pipelines.clients.s3 import S3Error, list_objects, make_s3_client, with_retries
from pipelines.config import PipelineConfig, resolve
from pipelines.retry import RetryPolicy
from tests.integration.faulty_proxy import FaultyProxy

FAST = RetryPolicy(attempts=5, base_delay_s=0.01)


def test_client_uses_the_resolved_endpoint_and_explicit_settings(s3_server: str) -> None:
    services = resolve(PipelineConfig(dataset_uri="s3://b/x"),
                       env={"AWS_ENDPOINT_URL": s3_server, "AWS_REGION": "eu-west-3"}).services
    client = make_s3_client(endpoint_url=services.s3_endpoint_url, region=services.s3_region,
                            max_pool_connections=7)
    assert client.meta.endpoint_url == s3_server
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.config.max_pool_connections == 7
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.s3["addressing_style"] == "path"  # what S3-compatible stores need
    # Without an endpoint the choice is boto3's own (it reads AWS_ENDPOINT_URL, which the fixture sets).
    assert make_s3_client().meta.endpoint_url == s3_server


def test_listing_timestamps_are_timezone_aware(s3_server: str, s3_bucket: str) -> None:
    client = make_s3_client(endpoint_url=s3_server)
    client.put_object(Bucket=s3_bucket, Key="stamp/a.txt", Body=b"a")
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="stamp/")["Contents"][0]["LastModified"]
    head = client.head_object(Bucket=s3_bucket, Key="stamp/a.txt")["LastModified"]
    assert listed.tzinfo is not None and abs((listed - head).total_seconds()) < 2


def test_list_objects_lists_every_folder_and_the_top_level(s3_server: str, s3_bucket: str) -> None:
    client = make_s3_client(endpoint_url=s3_server)
    keys = [f"p/{split}/{i:02d}.png" for split in ("trainA", "trainB", "testA") for i in range(7)]
    keys += ["p/top.txt", "p/trainA/deeper/z.png", "other/y.png", "p-sibling/w.png"]
    for key in keys:
        client.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    listed = list_objects(client, s3_bucket, "p/", max_workers=2)
    assert [o.key for o in listed] == sorted(k for k in keys if k.startswith("p/"))
    assert listed[0].size == len(listed[0].key) and listed[0].etag.strip('"')


def test_missing_bucket_fails_fast_with_a_clear_message(s3_server: str) -> None:
    client = make_s3_client(endpoint_url=s3_server)
    start = time.perf_counter()
    with pytest.raises(S3Error, match=r"s3://no-such-bucket-here.*NoSuchBucket.*bucket name") as info:
        with_retries(lambda: client.list_objects_v2(Bucket="no-such-bucket-here"), bucket="no-such-bucket-here",
                     action="list")
    assert time.perf_counter() - start < 2.0
    assert info.value.code == "NoSuchBucket"


def test_unreachable_endpoint_is_transient_and_named(s3_server: str) -> None:
    client = make_s3_client(endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout=1)
    with pytest.raises(S3Error, match="s3://b.*reachable") as info:
        with_retries(lambda: client.list_objects_v2(Bucket="b"), bucket="b",
                     policy=RetryPolicy(attempts=2, base_delay_s=0.01))
    assert info.value.transient


def test_reads_survive_503s_resets_and_truncated_bodies(s3_server: str, s3_bucket: str) -> None:
    direct = make_s3_client(endpoint_url=s3_server)
    payloads = {f"k{i}": bytes([i]) * (1000 + i) for i in range(6)}
    for key, data in payloads.items():
        direct.put_object(Bucket=s3_bucket, Key=key, Body=data)
    with FaultyProxy(s3_server, fail_every=3, drop_every=7, truncate_every=5) as proxy:
        client = make_s3_client(endpoint_url=proxy.url)

        def read(key: str) -> bytes:
            return with_retries(lambda: client.get_object(Bucket=s3_bucket, Key=key)["Body"].read(),
                                bucket=s3_bucket, key=key, policy=FAST)

        assert {key: read(key) for key in payloads} == payloads
    assert proxy.faults["503"] > 0 and proxy.faults["drop"] > 0 and proxy.faults["truncate"] > 0
