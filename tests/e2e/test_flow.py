"""The train-cyclegan flow end to end on real local services: moto's S3 server, a local Ray cluster
(2 CPU workers), a real `mlflow server` process, under Prefect's test harness.

One flow run covers the happy path *and* the retry path: the MLflow server sits behind a switchable
TCP proxy that is down when registration first runs, and comes up once Prefect has scheduled the
retry. The flow completes, registration ran twice, and no stage before it ran again. The same run is
watched live: a training hook holds rank 0 in epoch 2 until the server shows epoch 1's metrics in the
pipeline's MLflow run. Its 4 evaluated checkpoints are LoggedModels of that run (the registered version
is the best one's, those Ray dropped lose their weights), another one registered as the UI does is gated
and translated, and Prefect's events API shows the lineage dataset -> training run -> model version.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cyclegan_core.inference.translator import Translator
from cyclegan_core.training.fit import FitCallback
from cyclegan_core.training.model import CycleGAN
from pipelines.cli import app
from pipelines.config import (
    PipelineConfig,
    RegistrySettings,
    ScalingSettings,
)
from pipelines.registry.logged_models import run_models, version_model_id
from tests.conftest import drain_prefect_queues
from tests.flow_configs import tiny_flow_config
from tests.integration.test_besteval_ray import AwaitCheckpointModel

pytestmark = pytest.mark.slow

# 24 synthetic images per domain over 2 workers at batch size 4 (tiny_config): 3 steps per epoch.
STEPS_PER_EPOCH = 3


@dataclass(frozen=True)
class WaitForLiveMetric(FitCallback):
    """A worker callback: rank 0, after global step ``at_step`` (in epoch 2), waits until the
    tracking server shows an epoch-1 loss in run ``run_id`` (training is held meanwhile), then writes
    what it saw to ``marker``."""

    tracking_uri: str
    run_id: str
    at_step: int
    marker: Path
    timeout_s: float = 120.0

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        if step != self.at_step or model.rank != 0:
            return
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        end = time.monotonic() + self.timeout_s
        seen: dict[str, object] = {"step": step, "losses": []}
        while time.monotonic() < end:
            run = client.get_run(self.run_id)
            losses = sorted(key for key in run.data.metrics if key.startswith("train/loss_"))
            if losses:
                steps = [m.step for m in client.get_metric_history(self.run_id, losses[0])]
                seen = {"step": step, "losses": losses, "steps": steps, "status": run.info.status}
                break
            time.sleep(0.5)
        self.marker.write_text(json.dumps(seen))


class SwitchableProxy:
    """A TCP proxy on loopback that forwards to `target` while up and slams connections shut while down."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = threading.Event()
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self.up.is_set():
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: the server looks unreachable
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_config(dataset_uri: str, tmp: Path, *, model_name: str) -> PipelineConfig:
    """4 epochs, each checkpointed and evaluated (num_to_keep=2: Ray keeps the 2 best and the latest)."""
    return tiny_flow_config(dataset_uri, tmp, model_name=model_name, experiment="flow-test", workers=2, decay_epochs=3)


def asset_events(flow_run_id: object, timeout_s: float = 60) -> dict[str, object]:
    """The flow run's asset materializations through Prefect's events API, by asset key."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    drain_prefect_queues()  # the events this process emitted, sent
    wanted = EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
                         related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]))
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(wanted, limit=50).events
        if len(events) >= 3 or time.monotonic() > deadline:
            return {event.resource.id: event for event in events}
        time.sleep(0.5)


def asset_dependencies(event: object) -> set[str]:
    return {resource.id for resource in event.related if resource.role == "asset"}


def register_as_the_ui_does(tracking_uri: str, name: str, model_id: str, run_id: str) -> str:
    """The MLflow UI's "Register model" on a LoggedModel: its request, as the UI sends it; the version."""
    body = json.dumps({"name": name, "source": f"models:/{model_id}", "run_id": run_id, "model_id": model_id})
    request = urllib.request.Request(f"{tracking_uri}/ajax-api/2.0/mlflow/model-versions/create", data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["model_version"]["version"]


def task_runs_of(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run for run in runs}


def open_proxy_when_register_awaits_retry(proxy: SwitchableProxy, deadline_s: float = 600) -> threading.Thread:
    """Bring the MLflow proxy up once Prefect has put the failed `register` task into AwaitingRetry."""
    from prefect.client.orchestration import get_client

    def watch() -> None:
        end = time.monotonic() + deadline_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < end and not proxy.up.is_set():
                for run in client.read_task_runs():
                    if run.name.startswith("register") and run.state and run.state.name == "AwaitingRetry":
                        proxy.up.set()
                        return
                time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_flow_runs_all_stages_and_retries_an_unreachable_mlflow_once(
    prefect_harness, ray_local, s3_server, s3_bucket, mlflow_server, synthetic_dataset, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    import pipelines.flows.train
    import pipelines.tracking.run
    import pipelines.train
    from pipelines import registry
    from pipelines.flows.train import train_cyclegan
    from pipelines.ingest import upload_folder

    upload_folder(synthetic_dataset, f"s3://{s3_bucket}/synth")
    target = urlparse(mlflow_server)
    proxy = SwitchableProxy(target.hostname, target.port)
    proxy.up.set()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    config = tiny_config(f"s3://{s3_bucket}/synth", tmp_path, model_name="flow-e2e")

    # Fault injection: the MLflow server becomes unreachable right when registration starts for the
    # first time (the real register_model then runs against the dead proxy); the watcher brings the
    # server back once Prefect has scheduled the retry.
    real_register = registry.register_model
    first_call = threading.Event()

    def register_while_server_down_once(*args, **kwargs):
        if not first_call.is_set():
            first_call.set()
            proxy.up.clear()
            open_proxy_when_register_awaits_retry(proxy)
        return real_register(*args, **kwargs)

    monkeypatch.setattr(registry, "register_model", register_while_server_down_once)
    # The retry after 3 s instead of the production backoff's 5-15 s (the watcher polls every 0.5 s).
    monkeypatch.setattr(pipelines.flows.train, "register_task",
                        pipelines.flows.train.register_task.with_options(retry_delay_seconds=3, retry_jitter_factor=0))
    # Live tracking: rank 0 waits in epoch 2 until epoch 1's losses are in the pipeline's MLflow run.
    seen = tmp_path / "live-metrics-seen.json"
    real_train = pipelines.train.train_on_ray

    def train_watched_live(config, dataset, *, callbacks=(), tracking=None):
        assert tracking is not None, "the flow hands training its MLflow run"
        watch = WaitForLiveMetric(mlflow_server, tracking.run_id, STEPS_PER_EPOCH + 1, seen)
        # the driver logs each checkpoint's LoggedModel before Ray's retention can drop it (epochs of ~2 s)
        logged = AwaitCheckpointModel(mlflow_server, tracking.run_id, steps_per_epoch=STEPS_PER_EPOCH)
        return real_train(config, dataset, callbacks=[*callbacks, watch, logged], tracking=tracking)

    monkeypatch.setattr(pipelines.train, "train_on_ray", train_watched_live)
    monkeypatch.setattr(pipelines.tracking.run, "SYSTEM_METRICS_INTERVAL_S", 1.0)  # a sample within this short run
    try:
        state = train_cyclegan(config, return_state=True)
    finally:
        proxy.close()
    outcome = state.result()
    assert outcome.model is not None and outcome.report is not None and outcome.train is not None
    assert proxy.refused > 0, "registration never met the unreachable server"
    runs = task_runs_of(state.state_details.flow_run_id)
    assert runs["register"].run_count == 2
    for stage in ("ingest", "train", "evaluate"):
        assert runs[stage].run_count == 1, f"{stage} ran again"

    client = MlflowClient(mlflow_server, mlflow_server)
    champion = client.get_model_version_by_alias("flow-e2e", "champion")
    assert champion.version == outcome.model.version
    assert "champion" in outcome.model.aliases
    assert outcome.report.primary_metric == "psnr_AtoB"

    # One MLflow run followed the flow run: epoch 1 was on the server while epoch 2 trained; it holds
    # the params, the dataset input and the model registered (once, over two attempts), and is FINISHED.
    assert outcome.train.steps == 4 * STEPS_PER_EPOCH
    watched = json.loads(seen.read_text())
    assert watched["losses"] and watched["steps"] == [1] and watched["status"] == "RUNNING", watched
    run = client.get_run(outcome.model.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == outcome.train.run_name
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.data.params["train.batch_size"] == "4" and run.data.params["registry.model_name"] == "flow-e2e"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == outcome.dataset.version[:36]
    assert json.loads(dataset_input.dataset.profile)["trainA"] == outcome.dataset.counts["trainA"]
    assert len(run.outputs.model_outputs) == 4 and len(client.search_model_versions("name = 'flow-e2e'")) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, watched["losses"][0])] == [1, 2, 3, 4]
    assert run.data.metrics["psnr_AtoB"] == outcome.report.metrics["psnr_AtoB"]
    # MLflow's system metrics followed the run: the flow's host, and the training node as node-0
    assert run.data.tags["system_metrics"] == "on"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/node-0/cpu_utilization_percentage"} <= set(run.data.metrics)
    assert "dataset_version" in champion.tags and champion.tags["best_epoch"] and "gate:" in champion.description

    # Each of the 4 evaluated checkpoints is a LoggedModel of the run, its metrics linked; the registered
    # version was created from the best one; those Ray's retention dropped have lost their weights.
    models = {model.name: model for model in run_models(client, run.info.run_id)}
    assert sorted(models) == ["epoch-0001", "epoch-0002", "epoch-0003", "epoch-0004"]
    assert all("eval_psnr_AtoB" in {metric.key for metric in model.metrics} for model in models.values())
    best = models[f"epoch-{outcome.train.best_epoch:04d}"]
    assert version_model_id(champion) == best.model_id
    assert client.get_logged_model(best.model_id).tags["mlflow.modelVersions"]  # the UI links model and version
    kept = {folder.name for folder in (tmp_path / "runs" / outcome.train.run_name).glob("checkpoint_epoch*")}
    assert 2 <= len(kept) < 4  # num_to_keep=2 best + the latest
    for model in models.values():
        assert ("weights_deleted" not in model.tags) == (Path(model.tags["checkpoint_uri"]).name in kept)
        if "weights_deleted" in model.tags:
            assert client.list_logged_model_artifacts(model.model_id) == []
    # The UI opens the experiment as model training; the run's description is the pipeline's summary.
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    note = run.data.tags["mlflow.note.content"]
    assert f"`{outcome.dataset.uri}` version `{outcome.dataset.version}`" in note
    assert f"registered: best epoch {outcome.train.best_epoch} by eval_psnr_AtoB" in note
    assert "- gate: promoted to champion" in note and str(state.state_details.flow_run_id) in note

    # Lineage in Prefect: dataset -> training run -> model version, through Prefect's events API.
    materialized = asset_events(state.state_details.flow_run_id)
    data_key, run_key = f"s3://{s3_bucket}/synth", f"file://{tmp_path / 'runs' / outcome.train.run_name}"
    (version_key,) = [key for key in materialized if key.endswith(f"/models/flow-e2e/{outcome.model.version}")]
    assert version_key.startswith("mlflow://127.0.0.1:")
    assert materialized[data_key].payload["version"] == outcome.dataset.version
    assert asset_dependencies(materialized[run_key]) == {data_key}
    # the version: from the training run, scored on the dataset's test split (the evaluate stage's input)
    assert asset_dependencies(materialized[version_key]) == {run_key, data_key}
    assert materialized[version_key].payload["promoted"] is True

    # Another kept checkpoint, registered by hand as the UI does, gets the pipeline's evaluation, model
    # card and gate (`cyclegan gate`), and translates with `cyclegan translate --model models:/NAME/N`.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    other = next(model for model in models.values() if "weights_deleted" not in model.tags and model != best)
    by_hand = register_as_the_ui_does(mlflow_server, "flow-e2e", other.model_id, run.info.run_id)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    gated = CliRunner().invoke(app, ["gate", "flow-e2e", by_hand, "--config", str(config_file), "--json"])
    assert gated.exit_code == 0, gated.output
    version = client.get_model_version("flow-e2e", by_hand)
    assert version.tags["best_epoch"] == other.tags["epoch"] and version.tags["gate_decision"] in (
        "promoted", "kept_champion") and "psnr_AtoB" in version.tags["primary_metric"]
    assert "challenger" in json.loads(gated.stdout.strip().splitlines()[-1])["aliases"]
    image = min((synthetic_dataset / "testA").glob("*.png"))
    translated = tmp_path / "by-hand.png"
    done = CliRunner().invoke(app, ["translate", "--model", f"models:/flow-e2e/{by_hand}", "--backend", "torch",
                                    "--precision", "fp32", str(image), str(translated)])  # the checkpoint's exact math
    assert done.exit_code == 0, done.output
    checkpoint = Translator.from_checkpoint(Path(other.tags["checkpoint_uri"]) / "cyclegan.pt", device="cpu")
    checkpoint.precision = "fp32"
    expected = np.asarray(checkpoint([Image.open(image).convert("RGB")], direction="AtoB")[0])
    assert np.array_equal(np.asarray(Image.open(translated)), expected)

    # A second run on the same data and config under another model name: training and evaluation
    # come from Prefect's cache (keyed on dataset version + training fingerprint), only registration runs.
    monkeypatch.setattr(registry, "register_model", real_register)
    again = tiny_config(f"s3://{s3_bucket}/synth", tmp_path, model_name="flow-e2e-copy")
    second = train_cyclegan(again, return_state=True)
    second_outcome = second.result()
    assert second_outcome.train == outcome.train
    runs = task_runs_of(second.state_details.flow_run_id)
    assert runs["train"].state.name == "Cached" and runs["evaluate"].state.name == "Cached"

    # Scheduled retraining: the champion of flow-e2e-copy was trained on this dataset version,
    # so a run without force skips training and says why.
    skipped = train_cyclegan(again)
    assert skipped.train is None
    assert f"dataset version {outcome.dataset.version} with this config" in skipped.skipped
    assert outcome.train.fingerprint in skipped.skipped
    experiment = client.get_experiment_by_name("flow-test").experiment_id
    (skipped_run,) = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)
    assert skipped_run.info.status == "FINISHED" and skipped_run.data.tags["training_skipped"] == skipped.skipped

    # The cached training result points at exported generators that were deleted since: the flow does
    # not trust it, runs the train stage again, which finds the finished Ray run by its name and
    # exports the same checkpoint's generators from Ray's record of it, without starting workers.
    shutil.rmtree(outcome.train.generators_dir)
    third = train_cyclegan(tiny_config(f"s3://{s3_bucket}/synth", tmp_path, model_name="flow-e2e-third"))
    assert third.train is not None and third.train.generators_dir.is_dir()
    assert (third.train.checkpoint_uri, third.train.steps) == (outcome.train.checkpoint_uri, outcome.train.steps)


def test_a_failed_training_leaves_its_mlflow_run_failed_with_the_reason(
    prefect_harness, ray_local, s3_server, s3_bucket, mlflow_server, synthetic_dataset, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from pipelines.flows.train import train_cyclegan
    from pipelines.ingest import upload_folder

    upload_folder(synthetic_dataset, f"s3://{s3_bucket}/synth-fail")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    config = tiny_config(f"s3://{s3_bucket}/synth-fail", tmp_path, model_name="flow-fail").model_copy(update={
        "scaling": ScalingSettings(num_workers=16, cpus_per_worker=1),
        "registry": RegistrySettings(model_name="flow-fail", experiment="flow-fail")})
    state = train_cyclegan(config, return_state=True)
    assert state.is_failed()
    client = MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("flow-fail").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failed_reason"].startswith("ValueError: scaling asks for 16 workers")
    assert run.inputs.dataset_inputs, "ingest ran and was recorded before training failed"


def test_a_bad_parameter_fails_before_any_work(prefect_harness):
    from prefect.exceptions import ParameterTypeError

    from pipelines.flows.train import train_cyclegan

    with pytest.raises(ParameterTypeError, match="dataset_uri"):
        train_cyclegan({"dataset_uri": "not-a-bucket", "cache_dir": "/nonexistent"})
