"""Promotion rolls out, end to end with real components: a `mlflow server` (webhooks allowed to
loopback over HTTP, tests/conftest.py), the session's `prefect server` and process worker with
prefect.yaml deployed (tests/e2e/conftest.py), the receiver as a process (`cyclegan receiver`), the
webhook set up by `cyclegan webhook setup`, the moto S3 server and the Ray cluster the worker drives.

The alias moves as the MLflow UI moves it (``MlflowClient.set_registered_model_alias``): the
``rollout-champion`` run appears, completes with that version and writes that version's outputs; a
forged delivery is refused; a move made while the receiver is down rolls out when the receiver's
start reconciles; two quick moves end with the last version rolled out.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import _stop_process_group, drain_prefect_queues, free_port, wait_http
from tests.e2e.conftest import REPO, api_client

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("cyclegan"))
DEPLOYMENT = "rollout-champion/on-promotion"
MODEL = f"promoted-{uuid.uuid4().hex[:6]}"
IMAGES = ("a.png", "b.png")


def export_tiny_model(dest: Path, seed: int) -> Path:
    from cyclegan_core.config import ModelConfig
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.networks import build_generator

    tiny = ModelConfig(generator="resnet_6blocks", ngf=4, norm="instance")
    torch.manual_seed(seed)
    nets = [build_generator(tiny.generator, ngf=tiny.ngf, norm=tiny.norm) for _ in range(2)]
    return Translator(nets[0], nets[1], tiny).save_pretrained(dest)


def register_version(tracking_uri: str, generators: Path, run: str) -> str:
    """A new version of MODEL (alias challenger only: champion is moved by the tests, as in the UI)."""
    from pipelines.config import PipelineConfig, RegistrySettings, resolve
    from pipelines.records import EvalReport, TrainResult
    from pipelines.registry import register_model

    config = resolve(PipelineConfig(dataset_uri="s3://bucket/synth", registry=RegistrySettings(
        model_name=MODEL, experiment=f"exp-{MODEL}", auto_promote=False)), env={"MLFLOW_TRACKING_URI": tracking_uri})
    train = TrainResult(run_name=run, checkpoint_uri=f"/ckpt/{run}", generators_dir=generators, dataset_version=run,
                        dataset_uri="s3://bucket/synth", fingerprint=config.fingerprint, steps=1, epochs=1)
    report = EvalReport(metrics={"psnr_AtoB": 20.0}, primary_metric="psnr_AtoB", primary_value=20.0)
    return register_model(config, train, report).version


class Receiver:
    """`cyclegan receiver` as a process, stopped and started again by the tests."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path, self.port = env, log_path, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mlflow-webhook"

    def start(self, *options: str) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([CLI, "receiver", "--port", str(self.port), *options], env=self.env,
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/health", timeout_s=60, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            _stop_process_group(self.process, timeout_s=10)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def promotion(worker: dict[str, str], mlflow_server: str, s3_bucket_module: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three versions of MODEL, two images under s3://BUCKET/in, the deployment's targets pointed at
    them, the receiver running (no start reconciliation) and the webhook set up."""
    root = tmp_path_factory.mktemp("promotion")
    numbers = [register_version(mlflow_server, export_tiny_model(root / f"m{seed}", seed), f"promo-{seed}")
               for seed in (1, 2, 3)]
    assert numbers == ["1", "2", "3"]
    s3 = boto3.client("s3")
    for seed, name in enumerate(IMAGES):
        array = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = root / name
        Image.fromarray(array).save(path)
        s3.upload_file(str(path), s3_bucket_module, f"in/{name}")
    targets = [{"input_uri": f"s3://{s3_bucket_module}/in", "output_uri": f"s3://{s3_bucket_module}/out",
                "direction": "AtoB"}]
    from prefect.client.schemas.actions import DeploymentUpdate

    with api_client(worker) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        client.update_deployment(deployment.id, DeploymentUpdate(
            parameters={**deployment.parameters, "model_name": MODEL, "targets": targets}))
    secret = secrets.token_hex(16)
    env = {**worker, "CYCLEGAN_WEBHOOK_SECRET": secret, "CYCLEGAN_PROMOTION_MODELS": MODEL}
    receiver = Receiver(env, root / "receiver.log")
    receiver.start("--no-reconcile")
    setup = subprocess.run([CLI, "webhook", "setup", "--url", receiver.url], env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    try:
        assert setup.returncode == 0 and setup.stdout.startswith("created"), setup.stdout + setup.stderr
        from pipelines.promotion.webhook import ensure_webhook

        assert ensure_webhook(client, url=receiver.url, secret=secret)[1] is False  # set up again: updated
        assert [w.name for w in client.list_webhooks()].count("cyclegan-promotion") == 1
        yield {"bucket": s3_bucket_module, "receiver": receiver, "secret": secret, "client": client,
               "deployment_id": deployment.id}
    finally:
        receiver.stop()
        for webhook in client.list_webhooks():  # later modules' alias moves must not call a dead receiver
            client.delete_webhook(webhook.webhook_id)
        assert secret not in receiver.log()


@pytest.fixture(scope="module")
def s3_bucket_module(s3_server: str) -> str:
    name = f"promotion-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def rollout_runs(env: dict[str, str], deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    with api_client(env) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])), sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def wait_for_runs(env: dict[str, str], deployment_id: Any, count: int, timeout_s: float = 240) -> list[Any]:
    """The deployment's first ``count`` flow runs once they are all finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = rollout_runs(env, deployment_id)
        if len(runs) >= count and all(run.state and run.state.is_final() for run in runs):
            return runs
        time.sleep(1)
    raise AssertionError(f"{count} finished runs of {DEPLOYMENT} expected within {timeout_s} s; have "
                         f"{[(r.name, r.state_name) for r in rollout_runs(env, deployment_id)]}\n"
                         + Path(env["WORKER_LOG"]).read_text(errors="replace")[-4000:])


def outputs(bucket: str, version: str) -> list[str]:
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"out/{MODEL}/v{version}/")
    )
    return sorted(item["Key"] for page in pages for item in page.get("Contents", [])
                  if item["Key"].endswith(".png") and "/_" not in item["Key"])


def rolled_out(client: MlflowClient) -> str | None:
    return client.get_registered_model(MODEL).tags.get("rollout.champion.version")


def test_moving_champion_runs_the_rollout_with_that_version(worker, promotion) -> None:
    client, deployment_id = promotion["client"], promotion["deployment_id"]
    client.set_registered_model_alias(MODEL, "champion", "1")  # what the UI's alias editor calls
    (run,) = wait_for_runs(worker, deployment_id, 1)
    assert run.state.is_completed(), run.state.message
    assert run.parameters["version"] == "1" and run.parameters["triggered_by"].startswith("mlflow-webhook:")
    assert run.name.startswith(f"{MODEL}@champion-v1 by mlflow-webhook:")
    assert rolled_out(client) == "1"
    tags = client.get_model_version(MODEL, "1").tags
    assert datetime.fromisoformat(tags["rolled_out_at"]) and tags["rolled_out_by"] == run.parameters["triggered_by"]
    assert tags["rolled_out_flow_run"] == str(run.id)
    assert len(outputs(promotion["bucket"], "1")) == len(IMAGES)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with api_client(worker) as prefect_client:
        artifacts = prefect_client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    (summary,) = [a for a in artifacts if a.key == "rollout-champion-summary"]
    assert "**rollout**" in summary.data and "rolled out: 1" in summary.data


def test_a_forged_delivery_is_refused_and_changes_nothing(worker, promotion) -> None:
    receiver, client = promotion["receiver"], promotion["client"]
    before = len(rollout_runs(worker, promotion["deployment_id"]))
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": MODEL, "alias": "champion", "version": "3"}}).encode()
    forged = {"X-MLflow-Delivery-Id": str(uuid.uuid4()), "X-MLflow-Timestamp": str(int(time.time())),
              "X-MLflow-Signature": "v1,Zm9yZ2VkLXNpZ25hdHVyZS1mb3JnZWQtc2lnbmF0dXJlLQ==",
              "Content-Type": "application/json"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(receiver.url, data=body, headers=forged), timeout=10)
    assert refused.value.code == 401
    time.sleep(3)  # what an accepted delivery would have started by now
    assert len(rollout_runs(worker, promotion["deployment_id"])) == before
    assert rolled_out(client) == "1"
    assert "wrong signature" in receiver.log()


def test_a_move_while_the_receiver_is_down_rolls_out_when_it_starts(worker, promotion) -> None:
    receiver, client, deployment_id = promotion["receiver"], promotion["client"], promotion["deployment_id"]
    before = len(rollout_runs(worker, deployment_id))
    receiver.stop()
    client.set_registered_model_alias(MODEL, "champion", "2")
    time.sleep(5)  # MLflow's delivery fails at once (the test server does not retry it); margin for a busy host
    assert len(rollout_runs(worker, deployment_id)) == before and rolled_out(client) == "1"
    receiver.start()  # reconciles every watched alias on start
    runs = wait_for_runs(worker, deployment_id, before + 1)
    run = runs[-1]
    assert run.state.is_completed(), run.state.message
    assert run.parameters["triggered_by"] == "receiver-start" and run.parameters.get("version") is None
    assert run.name == f"{MODEL}@champion-v2 by receiver-start"
    assert rolled_out(client) == "2"
    assert len(outputs(promotion["bucket"], "2")) == len(IMAGES)


def test_two_quick_moves_end_with_the_last_version_rolled_out(worker, promotion) -> None:
    client, deployment_id = promotion["client"], promotion["deployment_id"]
    before = len(rollout_runs(worker, deployment_id))
    client.set_registered_model_alias(MODEL, "champion", "3")
    client.set_registered_model_alias(MODEL, "champion", "1")  # the rollback, straight after
    runs = wait_for_runs(worker, deployment_id, before + 2)[before:]
    assert all(run.state.is_completed() for run in runs), [(r.name, r.state.message) for r in runs]
    assert sorted(run.parameters["version"] for run in runs) == ["1", "3"]
    assert rolled_out(client) == "1"
    assert client.get_model_version(MODEL, "1").tags["rolled_out_flow_run"] in {str(run.id) for run in runs}


def test_the_webhook_secret_comes_from_a_prefect_secret_block(prefect_server: dict[str, str]) -> None:
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.promotion.settings import PromotionError, webhook_secret

    name = f"webhook-secret-{uuid.uuid4().hex[:6]}"
    value = secrets.token_hex(16)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        Secret(value=value).save(name)
        assert webhook_secret({"CYCLEGAN_WEBHOOK_SECRET_BLOCK": name}).get_secret_value() == value
        # the environment's secret wins over the block; a block that does not exist names itself and the fix
        assert webhook_secret({"CYCLEGAN_WEBHOOK_SECRET": "from-env",
                               "CYCLEGAN_WEBHOOK_SECRET_BLOCK": name}).get_secret_value() == "from-env"
        with pytest.raises(PromotionError, match=rf"'{name}-missing'.*prefect block create secret"):
            webhook_secret({"CYCLEGAN_WEBHOOK_SECRET_BLOCK": f"{name}-missing"})
        drain_prefect_queues()  # the block's events went through workers bound to this server
