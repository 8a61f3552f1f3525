"""Batch translation of an S3 prefix on Ray Data against real components: the moto S3 server, the
session's local Ray (``ray_local``), a real ``mlflow server`` holding the champion, the Prefect test
harness for the flow, and a real ``cyclegan translate s3://... s3://...`` killed mid-way, then run again
(it finishes the rest and exits 3 for the quarantined inputs)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.files import TranslateOptions
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator
from pipelines.batch import batch_settings, translate_batch
from pipelines.cli.app import ExitCode
from pipelines.registry import promote
from tests.integration.faulty_proxy import HOP_BY_HOP, QuietServer

TINY = ModelConfig(generator="resnet_6blocks", ngf=4, norm="instance")
CLI = str(Path(sys.executable).with_name("cyclegan"))
GOOD = ("a.png", "b.jpg", "sub/c.png", "sub/d.png", "e.png", "f.png")
BAD = {"empty.png": b"", "text.jpg": b"this is not a jpeg"}


def actor_translation(model: Path, image: Image.Image) -> np.ndarray:
    """What a CPU actor (one thread, the default backend: the measured auto) makes of ``image``."""
    from cyclegan_core.inference.backends import load_translator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return np.asarray(load_translator(model, device="cpu")([image])[0])
    finally:
        torch.set_num_threads(threads)


def export_tiny_model(dest: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    nets = [build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm) for _ in range(2)]
    return Translator(nets[0], nets[1], TINY).save_pretrained(dest)


def register(tracking_uri: str, name: str, generators: Path, run: str) -> str:
    """Log ``generators`` (G_AB/ + G_BA/) as a run's artifacts, register them as a new version of ``name``
    and make it the champion: what `cyclegan register` leaves in the registry, without the pyfunc wrapper
    and the evaluation (tests/integration/test_registry.py covers those)."""
    client = MlflowClient(tracking_uri, tracking_uri)
    experiment = client.get_experiment_by_name(f"exp-{name}")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(f"exp-{name}")
    mlflow_run = client.create_run(experiment_id, run_name=run)
    client.log_artifacts(mlflow_run.info.run_id, str(generators), "generators")
    client.set_terminated(mlflow_run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{mlflow_run.info.run_id}/generators",
                                          run_id=mlflow_run.info.run_id).version
    client.set_registered_model_alias(name, "champion", version)
    return str(version)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(name: str, seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    if name.endswith(".jpg"):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG")
        return buffer.getvalue()
    return png(array)


@pytest.fixture(scope="module")
def champion(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A model with version 1 as champion; ``models`` holds the exported generators of v1 and (unregistered) v2."""
    root = tmp_path_factory.mktemp("batch-models")
    name = f"batch-{uuid.uuid4().hex[:6]}"
    models = {"1": export_tiny_model(root / "one", seed=1), "2": export_tiny_model(root / "two", seed=2)}
    assert register(mlflow_server, name, models["1"], "run-1") == "1"
    return {"name": name, "models": models, "uri": f"models:/{name}@champion"}


def fill_inputs(bucket: str) -> None:
    """``in/``: six good 32 px images (two in a sub-folder, one JPEG) and two bad ones."""
    client = boto3.client("s3")
    for seed, name in enumerate(GOOD):
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=image_bytes(name, seed))
    for name, data in BAD.items():
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)


@pytest.fixture(scope="module")
def bucket(s3_server: str) -> str:
    """The module's bucket with ``in/`` filled; the flow test translates it first (the others need that
    first run, and each leaves every input done)."""
    name = f"batch-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    fill_inputs(name)
    return name


def settings(bucket: str, model_uri: str, tracking_uri: str, **options: object):
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return batch_settings(f"s3://{bucket}/in", f"s3://{bucket}/out", model_uri, env=env,
                          options=TranslateOptions(max_skipped=len(BAD), batch_size=2, actors=1, **options))


def objects(bucket: str, prefix: str) -> dict[str, dict]:
    client = boto3.client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix):]: item for page in pages for item in page.get("Contents", [])}


def read(bucket: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def outputs(bucket: str, root: str) -> set[str]:
    return {key for key in objects(bucket, root) if not key.startswith("_")}


# --- the flow, with the champion ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def flow_run(ray_local: None, mlflow_server: str, champion: dict, bucket: str, prefect_harness: None) -> object:
    """The first run over the module's bucket: the translate-cyclegan flow with the champion."""
    from pipelines.flows.translate import translate_cyclegan

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        return translate_cyclegan(input_uri=f"s3://{bucket}/in", output_uri=f"s3://{bucket}/out",
                                  model_uri=str(champion["uri"]), triggered_by="test", max_quarantined=len(BAD),
                                  batch_size=2, actors=1, return_state=True)


def test_flow_translates_good_images_and_quarantines_bad_ones_with_the_champion(
        flow_run: object, champion: dict, bucket: str) -> None:
    from prefect.client.orchestration import get_client

    state = flow_run
    result = state.result()
    name = champion["name"]
    root = f"out/{name}/v1/AtoB/"
    assert (result.model_version, result.translated, result.quarantined) == ("1", len(GOOD), len(BAD))
    assert outputs(bucket, root) == {"a.png", "b.png", "sub/c.png", "sub/d.png", "e.png", "f.png"}
    head = boto3.client("s3").head_object(Bucket=bucket, Key=f"{root}b.png")
    assert head["Metadata"]["model-version"] == "1" and head["Metadata"]["model-uri"] == f"models:/{name}/1"
    assert head["Metadata"]["source-uri"] == f"s3://{bucket}/in/b.jpg"
    expected = actor_translation(
        champion["models"]["1"], Image.open(io.BytesIO(image_bytes("a.png", 0))).convert("RGB")
    )
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read(bucket, f"{root}a.png")))), expected)
    reasons = {key: json.loads(read(bucket, f"{root}{key}"))["reason"] for key in objects(bucket, root)
               if key.startswith("_quarantine/")}
    assert reasons.keys() == {"_quarantine/empty.png.json", "_quarantine/text.jpg.json"}
    assert reasons["_quarantine/empty.png.json"].startswith("empty")
    manifest = json.loads(read(bucket, f"{root}_manifest.json"))
    assert manifest["model"]["resolved_uri"] == f"models:/{name}/1" and len(manifest["records"]) == 8
    assert not [key for key in objects(bucket, root) if key.startswith("_ledger/")]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        summary = client.read_latest_artifacts()
    assert run.name == f"{name}-v1-AtoB"
    markdown = next(a for a in summary if a.key == "translate-cyclegan-summary").data
    assert "triggered by: test" in markdown and "data:image/png;base64," in markdown and "text.jpg" in markdown


# --- incremental runs (the plain function the flow and the CLI call) ----------------------------------


def test_a_rerun_translates_nothing(flow_run: object, mlflow_server: str, champion: dict, bucket: str) -> None:
    root = f"out/{champion['name']}/v1/AtoB/"
    written = {key: item["LastModified"] for key, item in objects(bucket, root).items() if not key.startswith("_")}
    again = translate_batch(settings(bucket, str(champion["uri"]), mlflow_server))
    assert (again.translated, again.skipped, len(again.errors)) == (0, len(GOOD) + len(BAD), 0)
    assert {key: item["LastModified"] for key, item in objects(bucket, root).items() if key in written} == written


def test_a_changed_input_is_translated_again(flow_run: object, mlflow_server: str, champion: dict,
                                             bucket: str) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key="in/sub/c.png", Body=image_bytes("c.png", 99))
    boto3.client("s3").put_object(Bucket=bucket, Key="in/empty.png", Body=image_bytes("empty.png", 98))
    again = translate_batch(settings(bucket, str(champion["uri"]), mlflow_server))
    assert (again.translated, again.skipped, again.quarantined) == (2, 6, 1)
    root = f"out/{champion['name']}/v1/AtoB/"
    assert "_quarantine/empty.png.json" not in objects(bucket, root)  # fixed inputs leave the quarantine
    head = boto3.client("s3").head_object(Bucket=bucket, Key=f"{root}sub/c.png")
    assert head["Metadata"]["source-etag"] == objects(bucket, "in/")["sub/c.png"]["ETag"].strip('"')


def test_a_new_champion_version_translates_everything_into_its_own_prefix(
        flow_run: object, mlflow_server: str, champion: dict, bucket: str) -> None:
    name, models = champion["name"], champion["models"]
    v1 = objects(bucket, f"out/{name}/v1/AtoB/")
    version = register(mlflow_server, str(name), models["2"], f"run-2-{bucket}")
    try:
        result = translate_batch(settings(bucket, str(champion["uri"]), mlflow_server))
    finally:
        promote(str(name), "1", tracking_uri=mlflow_server)  # the other tests use version 1
    assert (result.model_version, result.skipped) == (version, 0)
    assert result.translated == len(outputs(bucket, f"out/{name}/v1/AtoB/"))
    assert outputs(bucket, f"out/{name}/v{version}/AtoB/") == outputs(bucket, f"out/{name}/v1/AtoB/")
    assert objects(bucket, f"out/{name}/v1/AtoB/") == v1  # the old version's outputs stay as they were


def test_local_folders_are_translated_and_a_rerun_translates_nothing(
        ray_local: None, mlflow_server: str, champion: dict, tmp_path: Path) -> None:
    """The same job between local folders (a shared mount on a cluster): outputs, quarantine, manifest
    as on S3, and a second run finds everything done."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    for seed, name in enumerate(("a.png", "sub/c.png")):
        (inputs / name).write_bytes(image_bytes(name, seed))
    (inputs / "empty.png").write_bytes(b"")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    local = batch_settings(str(inputs), str(out), str(champion["uri"]), env=env,
                           options=TranslateOptions(max_skipped=1, batch_size=2, actors=1))
    first = translate_batch(local)
    root = out / str(champion["name"]) / "v1" / "AtoB"
    assert (first.model_version, first.translated, first.quarantined) == ("1", 2, 1)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert [rel for rel in written if not rel.startswith("_")] == ["a.png", "sub/c.png"]
    source = Image.open(io.BytesIO(image_bytes("a.png", 0))).convert("RGB")
    expected = actor_translation(champion["models"]["1"], source)
    assert np.array_equal(np.asarray(Image.open(root / "a.png")), expected)
    assert json.loads((root / "_quarantine" / "empty.png.json").read_text())["reason"].startswith("empty")
    assert len(json.loads((root / "_manifest.json").read_text())["records"]) == 3
    assert not list(out.rglob(".*"))  # no temporaries left
    again = translate_batch(local)
    assert (again.translated, again.skipped) == (0, 3)


# --- an official .pth (no registry) --------------------------------------------------------------------


def test_an_s3_prefix_is_translated_with_an_official_pth(ray_local: None, s3_server: str, s3_bucket: str,
                                                         tmp_path: Path) -> None:
    """`cyclegan translate s3://.../in s3://.../out --model latest_net_G_A.pth`: the official file's generator
    translates every input on the actors, the outputs are keyed by (and the manifest records) the file's
    sha256, no MLflow store is touched, and a re-run translates nothing."""
    import ray

    torch.manual_seed(3)
    pth = tmp_path / "latest_net_G_A.pth"
    torch.save(build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm).state_dict(), pth)
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    fill_inputs(s3_bucket)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [CLI, "translate", f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out", "--model", str(pth), "--batch-size", "2",
         "--actors", "1", "--allow-skipped", "--json"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == ExitCode.OK, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    version = f"sha-{digest[:12]}"
    root = f"out/latest_net_G_A/{version}/AtoB/"
    assert (result["model_version"], result["translated"], result["quarantined"]) == (version, len(GOOD), len(BAD))
    assert outputs(s3_bucket, root) == {"a.png", "b.png", "sub/c.png", "sub/d.png", "e.png", "f.png"}
    expected = actor_translation(pth, Image.open(io.BytesIO(image_bytes("a.png", 0))).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read(s3_bucket, f"{root}a.png")))), expected)
    manifest = json.loads(read(s3_bucket, f"{root}_manifest.json"))
    assert manifest["model"]["sha256"] == digest and manifest["model"]["resolved_uri"] == str(pth)
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=f"{root}b.png")
    assert head["Metadata"]["model-version"] == version and head["Metadata"]["model-uri"] == str(pth)
    assert list(workdir.iterdir()) == []  # no MLflow store created for a local model
    again = translate_batch(batch_settings(f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out", str(pth), env=env,
                                           options=TranslateOptions(max_skipped=None, batch_size=2, actors=1)))
    assert (again.model_version, again.translated, again.skipped) == (version, 0, len(GOOD) + len(BAD))


# --- a run killed mid-way ------------------------------------------------------------------------------


class StallingProxy:
    """An HTTP proxy to the S3 server that holds every PUT after the first ``batches`` ledgers went
    through for ever (the client waits for an answer that never comes): a run stopped inside a write
    of the batch after them. (Ray Data picks the batches' order, so the batch, not the image, counts.)"""

    def __init__(self, upstream: str, *, batches: int) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(upstream)
        self.host, self.port, self.batches = parts.hostname, parts.port, batches
        self.ledgers = 0
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = QuietServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT":
                    with proxy.lock:
                        hold = proxy.ledgers >= proxy.batches
                        proxy.ledgers += "/_ledger/" in self.path
                    if hold:
                        proxy.stalled.set()
                        proxy.release.wait()
                        return
                conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

        return Handler


@pytest.mark.slow
def test_a_run_killed_midway_resumes_without_redoing_finished_outputs(
        ray_local: None, s3_server: str, mlflow_server: str, champion: dict, s3_bucket: str, tmp_path: Path) -> None:
    import ray

    bucket = s3_bucket
    fill_inputs(bucket)
    proxy = StallingProxy(s3_server, batches=1)  # the first batch (2 inputs) is written, the second hangs
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "MLFLOW_TRACKING_URI": mlflow_server,
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        [CLI, "translate", f"s3://{bucket}/in", f"s3://{bucket}/out", "--model", str(champion["uri"]),
         "--batch-size", "2", "--actors", "1", "--allow-skipped"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proxy.stalled.wait(timeout=120), (tmp_path / "killed.log").read_text()
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        proxy.close()
    root = f"out/{champion['name']}/v1/AtoB/"
    done_before = {key: item["LastModified"] for key, item in objects(bucket, root).items() if not key.startswith("_")}
    assert 1 <= len(done_before) <= 2 and "_manifest.json" not in objects(bucket, root)  # one bad input at most
    time.sleep(1.1)  # S3 timestamps have one-second resolution: a re-written object would show a later one
    done = subprocess.run(  # the same command again; without --allow-skipped the quarantine exits 3
        [CLI, "translate", f"s3://{bucket}/in", f"s3://{bucket}/out", "--model", str(champion["uri"]),
         "--batch-size", "2", "--actors", "1", "--json"],
        env={**env, "AWS_ENDPOINT_URL": s3_server}, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == ExitCode.PARTIAL, done.stderr
    assert f"resolved to models:/{champion['name']}/1" in done.stderr and "--max-skipped 0" in done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert (resumed["translated"], resumed["quarantined"], resumed["errors"]) == (
        len(GOOD) - len(done_before), len(BAD), [])
    assert resumed["skipped"] == 2  # the first batch's two inputs, known from its ledger
    after = objects(bucket, root)
    assert {key: after[key]["LastModified"] for key in done_before} == done_before  # not redone
    for key in outputs(bucket, root):  # every object whole
        assert Image.open(io.BytesIO(read(bucket, f"{root}{key}"))).size == (32, 32)
