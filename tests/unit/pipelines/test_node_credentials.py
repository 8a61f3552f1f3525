"""AWS credentials stay on each node (pipelines.clients.ray_cluster, pipelines.train.storage): what Ray
pickles carries no key, and a process that needs S3 without credentials gets one line naming its node.

Nothing here starts Ray: ``node_credentials_problem`` asks Ray for the node only when it must fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray.cloudpickle

from pipelines.clients.ray_cluster import (
    CREDENTIALS_DOC,
    has_aws_credentials,
    missing_credentials_message,
    node_credentials_problem,
)
from pipelines.config import PipelineConfig, Services, resolve
from pipelines.train.cluster import s3_uses
from pipelines.train.storage import resolve_storage

SECRET = "unit-test-secret-marker-7f3a"
# Every source of botocore's chain that the environment can switch (the rest is the files named here).
CHAIN_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                   "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@pytest.fixture()
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A process whose chain finds nothing: no variables, no shared files, no instance metadata."""
    for name in CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture()
def secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-token")


def config(tmp_path: Path, storage_path: str) -> PipelineConfig:
    return PipelineConfig(dataset_uri="s3://data/horses", cache_dir=tmp_path / "cache",
                          run={"storage_path": storage_path})


def test_s3_storage_filesystem_pickles_without_the_key(secret_in_env: None) -> None:
    storage = resolve_storage("s3://bucket/runs", Services(s3_endpoint_url="http://127.0.0.1:9000"))
    shipped = ray.cloudpickle.dumps(storage.filesystem)
    assert SECRET.encode() not in shipped and b"unit-test-key" not in shipped
    assert ray.cloudpickle.loads(shipped).region == "us-east-1"


def test_the_resolved_config_ray_ships_carries_no_credential(secret_in_env: None, tmp_path: Path) -> None:
    resolved = resolve(config(tmp_path, "s3://bucket/runs"))
    assert SECRET.encode() not in ray.cloudpickle.dumps(resolved)


def test_s3_uses_names_the_storage_and_the_ingest(tmp_path: Path) -> None:
    on_s3 = resolve(config(tmp_path, "s3://bucket/runs"), env={})
    local = resolve(config(tmp_path, str(tmp_path / "runs")), env={})
    assert s3_uses(local, ingests=False) == []
    assert s3_uses(on_s3, ingests=False) == ["run.storage_path s3://bucket/runs"]
    assert s3_uses(local, ingests=True) == ["ingesting s3://data/horses (no dataset cache on this node)"]


def test_the_standard_chain_is_what_decides(secret_in_env: None) -> None:
    assert has_aws_credentials()


def test_no_credentials_in_the_chain_is_seen(no_credentials: None) -> None:
    assert not has_aws_credentials()


def test_a_process_that_needs_no_s3_or_has_credentials_passes_without_asking_ray(
    no_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert node_credentials_problem([], process="worker") is None  # would start a local Ray otherwise
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert node_credentials_problem(["run.storage_path s3://b/r"], process="worker") is None


def test_the_missing_credentials_error_is_one_line_naming_node_use_and_fix() -> None:
    message = missing_credentials_message(
        ["run.storage_path s3://b/runs", "ingesting s3://b/data (no dataset cache on this node)"],
        process="Ray Train worker rank 1", node="10.0.3.7 (node ID 4f1c)")
    assert "\n" not in message
    assert message.startswith("Ray Train worker rank 1 on Ray node 10.0.3.7 (node ID 4f1c) found no AWS "
                              "credentials for run.storage_path s3://b/runs and ingesting s3://b/data")
    assert CREDENTIALS_DOC in message and "Kubernetes Secret" in message
