"""No secret in anything a pipeline run leaves behind (issue #13 item 1).

One real run of the train-cyclegan flow (`cyclegan run`, a subprocess, so its local Ray is its own):
the dataset on the moto S3 server, checkpoints on ``s3://``, Prefect's ephemeral API in a private
``PREFECT_HOME``, MLflow in a SQLite store, Ray's session folder under ``RAY_TMPDIR``, with a unique
marker in ``AWS_SECRET_ACCESS_KEY`` (moto accepts any), ``MLFLOW_TRACKING_PASSWORD`` and
``PREFECT_API_AUTH_STRING``. Then every file of the run's folder (Ray's session logs and state, the
MLflow store and artifacts, the Prefect home, cache, outputs, temp files, the CLI's own output) and
every object in the bucket is scanned: the marker is in none of them.

And a Ray node without credentials of its own (a real `ray start --head` whose environment lacks
them) makes `cyclegan train` with S3 storage fail with one line naming the node and the fix.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import ray.util

from pipelines.clients.ray_cluster import CREDENTIALS_DOC
from pipelines.config import (
    PipelineConfig,
)
from pipelines.ingest import upload_folder
from tests.conftest import ray_cluster
from tests.flow_configs import tiny_flow_config

# Variables of this test process that would point the run at other services or another Ray.
FOREIGN_PREFIXES = ("RAY_", "PREFECT_", "MLFLOW_")
AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
CYCLEGAN = str(Path(sys.executable).with_name("cyclegan"))


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under ``root`` (symlinks not followed) whose bytes contain ``needle``."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
    return found


def objects_containing(bucket: str, needle: bytes) -> tuple[list[str], list[str]]:
    """Keys of the bucket's objects whose bytes contain ``needle``, and the keys of all objects read."""
    s3 = boto3.client("s3")
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for obj in page.get("Contents", [])]
    return [key for key in keys if needle in s3.get_object(Bucket=bucket, Key=key)["Body"].read()], keys


@pytest.fixture()
def run_root() -> Iterator[Path]:
    """A short folder for the whole run: Ray's unix socket paths under it must stay < 108 characters."""
    root = Path(tempfile.mkdtemp(prefix="sec-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def flow_config(dataset_uri: str, root: Path, bucket: str) -> PipelineConfig:
    return tiny_flow_config(dataset_uri, root, model_name="secrets", experiment="secrets",
                            storage_path=f"s3://{bucket}/runs", local_num_cpus=2)


def test_files_containing_reads_every_file(tmp_path: Path) -> None:
    """The scanner finds a needle anywhere in a nested file's bytes (so a clean scan means something)."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "log.bin").write_bytes(b"\x00prefix-NEEDLE-suffix\xff")
    (tmp_path / "clean.txt").write_text("nothing here")
    assert files_containing(tmp_path, b"NEEDLE") == [tmp_path / "a" / "b" / "log.bin"]


@pytest.mark.slow
def test_no_secret_in_any_file_of_a_flow_run(s3_server: str, s3_bucket: str, synthetic_dataset: Path,
                                             run_root: Path) -> None:
    uri = f"s3://{s3_bucket}/synth"
    upload_folder(synthetic_dataset, uri)
    marker = f"SECRETMARKER{secrets.token_hex(12)}"
    config_file = run_root / "config.json"  # JSON is YAML
    config_file.write_text(flow_config(uri, run_root, s3_bucket).model_dump_json())
    for folder in ("ray", "tmp", "prefect", "home"):
        (run_root / folder).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)} | {
        "AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "secrets-test", "AWS_SECRET_ACCESS_KEY": marker,
        "AWS_EC2_METADATA_DISABLED": "true",
        # the other credentials a pipeline process holds (unchecked by these local services): kept out too
        "MLFLOW_TRACKING_USERNAME": "secrets-test", "MLFLOW_TRACKING_PASSWORD": f"{marker}-mlflow",
        "PREFECT_API_AUTH_STRING": f"secrets-test:{marker}-prefect",
        "RAY_TMPDIR": str(run_root / "ray"), "TMPDIR": str(run_root / "tmp"), "HOME": str(run_root / "home"),
        "RAY_USAGE_STATS_ENABLED": "0", "PREFECT_HOME": str(run_root / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",  # a loaded 2-core host
        "MLFLOW_TRACKING_URI": f"sqlite:///{run_root / 'mlflow.db'}",
    }
    done = subprocess.run([CYCLEGAN, "run", str(config_file), "--json"], cwd=run_root, env=env,
                          capture_output=True, timeout=600, check=False)
    (run_root / "cli.stdout").write_bytes(done.stdout)
    (run_root / "cli.stderr").write_bytes(done.stderr)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]

    # What the scan covers really exists: Ray's session (with the runtime-env agent's log), the MLflow
    # store and artifacts, the Prefect home's database, the checkpoints in the bucket.
    (session,) = (p for p in (run_root / "ray" / "ray").glob("session_2*") if p.is_dir())
    assert (session / "logs" / "runtime_env_agent.log").is_file()
    assert (run_root / "mlflow.db").is_file() and any((run_root / "mlartifacts").rglob("*"))
    assert any((run_root / "prefect").rglob("*.db"))
    assert any((run_root / "outputs").rglob("*.safetensors"))
    leaked, scanned = objects_containing(s3_bucket, marker.encode())
    assert any(key.startswith("runs/") and key.endswith(".pt") for key in scanned)
    assert leaked == []
    assert [str(p.relative_to(run_root)) for p in files_containing(run_root, marker.encode())] == []


@pytest.mark.slow
def test_a_node_without_credentials_fails_the_run_with_one_line_naming_it(
    s3_bucket: str, synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{s3_bucket}/synth"
    upload_folder(synthetic_dataset, uri)
    config_file = tmp_path / "config.json"
    config_file.write_text(flow_config(uri, tmp_path, s3_bucket).model_dump_json())
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for on this host
    (tmp_path / "home").mkdir()
    with ray_cluster(tmp_path / "home", cpus_per_node=2, without=AWS_CREDENTIALS) as cluster:
        # the driver has credentials (it ingests the dataset), the cluster's only node has none
        done = subprocess.run([CYCLEGAN, "train", "--config", str(config_file)], env=os.environ | cluster.env,
                              capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    message = " ".join(done.stderr.split())  # the CLI wraps long lines
    node_ip = re.escape(ray.util.get_node_ip_address())  # this host: the cluster's only node
    assert re.search(
        rf"error: NodeCredentialsError: Ray Train's controller on Ray node {node_ip} "
        rf"\(node ID [0-9a-f]{{56}}\) found no AWS credentials for run\.storage_path s3://{s3_bucket}/runs: "
        "give every Ray node credentials of its own",
        message,
    ), message[-3000:]
    assert CREDENTIALS_DOC in message
