"""The model server's pure parts: which version it serves and when it switches, the Serve options its
settings make, MLflow's scoring JSON read and written, a replica's batch translation, and the rollout
flow's wait on a server."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.memory import forward_bytes
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator
from pipelines.clients.embedded import free_port
from pipelines.flows.rollout import RolloutOutcome, summary_markdown
from pipelines.serving.model import TranslateItem, load_error_reason, load_for_serving, translate_items
from pipelines.serving.scoring import ScoringError, check_length, parse_image_body, parse_invocation
from pipelines.serving.served import wait_until_served
from pipelines.serving.server import status_change
from pipelines.serving.settings import ServeSettings, local_ray_cpus, model_deployment_options
from pipelines.serving.watcher import deploy_outcome, plan_switch, wanted_version

TINY = ModelConfig(generator="resnet_6blocks", ngf=4, norm="instance")
MiB = 2**20


def settings(**overrides: Any) -> ServeSettings:
    return ServeSettings(model="m", tracking_uri="http://mlflow:5000", **overrides)


# --- which version, when ------------------------------------------------------------------------------


def test_the_recorded_rollout_wins_over_the_alias() -> None:
    assert wanted_version(rolled_out="2", alias_version="3") == "2"


def test_before_any_rollout_the_alias_version_is_served() -> None:
    assert wanted_version(rolled_out=None, alias_version="3") == "3"


def test_a_new_wanted_version_is_started_and_the_served_one_kept() -> None:
    plan = plan_switch(serving="1", wanted="2", failed_at={}, now=100.0, retry_after_s=60)
    assert (plan.action, plan.version) == ("start", "2")
    assert plan_switch(serving="2", wanted="2", failed_at={}, now=100.0, retry_after_s=60).action == "keep"
    assert plan_switch(serving=None, wanted=None, failed_at={}, now=0.0, retry_after_s=60).action == "wait"


def test_a_version_that_just_failed_is_not_retried_until_the_delay_passed() -> None:
    waiting = plan_switch(serving="1", wanted="2", failed_at={"2": 90.0}, now=100.0, retry_after_s=60)
    assert waiting.action == "wait"
    assert waiting.reason == "v2 failed to load; v1 stays served, v2 is tried again 60 s after its failure"
    assert plan_switch(serving="1", wanted="2", failed_at={"2": 30.0}, now=100.0, retry_after_s=60).action == "start"


def test_a_switch_is_done_when_serve_reports_the_model_healthy_and_failed_when_it_gave_up() -> None:
    assert deploy_outcome("RUNNING", "HEALTHY") == "healthy"
    assert deploy_outcome("DEPLOYING", "UPDATING") == "deploying"
    assert deploy_outcome("DEPLOYING", "DEPLOY_FAILED") == "failed"  # a failed update, being replaced
    assert deploy_outcome("DEPLOY_FAILED", "DEPLOY_FAILED") == "failed"
    assert deploy_outcome(None, None) == "deploying"


def test_the_failure_reason_is_the_replicas_load_error_line() -> None:
    message = ("The deployment failed to start 3 times in a row during a rolling update. ... Error:\n"
               "\x1b[36mray::ServeReplica:cyclegan-model:Translator.initialize_and_get_metadata()\x1b[39m\n"
               '  File "pipelines/serving/model.py", line 160, in __init__\n'
               "pipelines.serving.model.ModelLoadError: m v3 failed to load: RegistryError: no G_AB/\n")
    assert load_error_reason(message) == "m v3 failed to load: RegistryError: no G_AB/"
    assert load_error_reason("Error:\n  File x\nValueError: boom\n") == "ValueError: boom"


def test_the_server_logs_each_change_once_with_the_failure_reason() -> None:
    first = {"state": "serving v1", "last_failure": None}
    failed = {"state": "v2 failed to load; v1 stays served", "last_failure": {"version": "2", "reason": "m v2: gone"}}
    assert status_change(None, first) == "serving v1"
    assert status_change(first, dict(first)) is None
    assert status_change(first, failed) == "v2 failed to load; v1 stays served: m v2: gone"
    assert status_change(failed, dict(failed)) is None


# --- settings and the Serve options they make -----------------------------------------------------------


def test_a_switch_starts_the_new_replicas_before_the_old_ones_stop() -> None:
    options = model_deployment_options(settings(replica_cpus=2, replica_gpus=0.5, max_batch_size=16))
    assert options["max_surge_percent"] == 100
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] >= 16  # a batch can fill


def test_replica_bounds_make_an_autoscaling_config() -> None:
    options = model_deployment_options(settings(min_replicas=1, max_replicas=4, target_ongoing_requests=6))
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                             "target_ongoing_requests": 6}
    assert "num_replicas" not in options


def test_the_local_ray_has_room_for_a_switch() -> None:
    assert local_ray_cpus(settings(replica_cpus=2), host_cpus=2) == 4  # old and new replica side by side
    assert local_ray_cpus(settings(replica_cpus=1), host_cpus=8) == 8


def test_gpu_replicas_run_on_cuda_and_cpu_replicas_use_their_cpus_as_threads() -> None:
    assert settings(replica_gpus=1).device == "cuda" and settings().device == "cpu"
    assert settings(replica_cpus=2.5).torch_threads == 2 and settings(replica_cpus=0.5).torch_threads == 1


@pytest.mark.parametrize(("overrides", "field"), [
    ({"backend": "tensorrt"}, "backend must be one of auto, torch, openvino"),
    ({"precision": "int8"}, "precision int8 calibrates on images of the model's input domain"),
    ({"backend": "openvino", "precision": "fp16"}, "backend openvino computes fp32, bf16, int8, not fp16"),
    ({"backend": "openvino", "replica_gpus": 1}, "backend openvino runs on the CPU"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) must not exceed max_replicas (2)"),
    ({"poll_s": 0}, "poll_s"),
    ({"precision": "int4"}, "precision"),
])
def test_bad_settings_are_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        settings(**overrides)


def test_cyclegan_serve_refuses_a_bad_setting_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    done = CliRunner().invoke(app, ["serve", "--model", "m", "--poll-s", "0"])
    assert done.exit_code == 4 and "poll_s" in done.output, done.output
    done = CliRunner().invoke(app, ["serve", "--model", "m", "--detach"])
    assert done.exit_code == 4 and "--detach" in done.output and "RAY_ADDRESS" in done.output, done.output
    done = CliRunner().invoke(app, ["serve", "--model", "m", "--max-body-size", "big"])
    assert done.exit_code == 4 and "'big'" in done.output, done.output


# --- MLflow's scoring JSON --------------------------------------------------------------------------------


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def scoring_body(*rows: str, **params: str) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[row] for row in rows]},
                       "params": params}).encode()


def test_a_request_is_read_as_mlflow_models_serve_reads_it() -> None:
    rows = [base64.b64encode(png((8, 6), seed)).decode() for seed in (1, 2)]
    invocation = parse_invocation(scoring_body(*rows, direction="BtoA", memory_budget="2GiB"),
                                  "application/json; charset=utf-8")
    assert [image.shape for image in invocation.images] == [(6, 8, 3), (6, 8, 3)]
    assert np.array_equal(invocation.images[1], np.asarray(Image.open(io.BytesIO(png((8, 6), 2)))))
    assert (invocation.direction, invocation.memory_budget) == ("BtoA", 2 * 2**30)
    records = json.dumps({"dataframe_records": [{"image": rows[0]}]}).encode()
    assert parse_invocation(records, "application/json").direction == "AtoB"


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    (scoring_body("aGVsbG8="), "text/csv", 415, "this server takes application/json"),
    (b"{not json", "application/json", 400, "Ensure that input is a valid JSON formatted string"),
    (b"[]", "application/json", 400, "must be a JSON dictionary"),
    (scoring_body("aGVsbG8="), "application/json", 400, "image row 0: not a readable image"),
    (scoring_body("aGVsbG8=", direction="up"), "application/json", 400, "param direction must be one of"),
], ids=["content-type", "not-json", "not-a-dict", "not-an-image", "direction"])
def test_a_bad_request_is_refused_as_mlflow_does(body: bytes, content_type: str, status: int, message: str) -> None:
    with pytest.raises(ScoringError) as refused:
        parse_invocation(body, content_type)
    assert refused.value.status == status and message in refused.value.message
    assert json.loads(refused.value.document())["message"] == refused.value.message


def test_a_translate_body_is_the_image_file() -> None:
    invocation = parse_image_body(png((5, 4)), {"direction": "BtoA"})
    assert invocation.images[0].shape == (4, 5, 3) and invocation.direction == "BtoA"
    with pytest.raises(ScoringError, match="request body: not a readable image"):
        parse_image_body(b"GIF89a", {})


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read() -> None:
    check_length("1024", 1024)
    check_length(None, 1024)
    with pytest.raises(ScoringError) as refused:
        check_length("1025", 1024)
    assert refused.value.status == 413 and "1024 bytes" in refused.value.message


# --- a replica's batch ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def translator() -> Translator:
    torch.manual_seed(0)
    nets = [build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm) for _ in range(2)]
    return Translator(nets[0], nets[1], TINY, precision="fp32")


def pixels(size: tuple[int, int], seed: int) -> np.ndarray:
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)  # smooth: what tiles with thumbnail statistics suit
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    return ((np.stack([np.sin(6 * x + 4 * y + p) for p in phase], axis=-1) + 1) * 127.5).astype(np.uint8)


def decoded(answer: Any) -> np.ndarray:
    assert answer.error is None, answer.error
    return np.asarray(Image.open(io.BytesIO(answer.png)))


def test_a_batch_answers_in_order_each_image_as_alone(translator: Translator) -> None:
    images = [pixels((24, 20), 1), pixels((16, 12), 2), pixels((24, 20), 3)]
    items = [TranslateItem(images[0], "AtoB", None), TranslateItem(images[1], "BtoA", None),
             TranslateItem(images[2], "AtoB", None)]
    answers = translate_items(translator, items, "7")
    assert [answer.version for answer in answers] == ["7", "7", "7"]
    for item, answer in zip(items, answers, strict=True):
        alone = translator([Image.fromarray(item.image)], direction=item.direction)[0]
        assert np.array_equal(decoded(answer), np.asarray(alone))


@pytest.fixture()
def holding_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The translator reads this process as holding no memory: a budget is what is free."""
    import cyclegan_core.inference.translator

    monkeypatch.setattr(cyclegan_core.inference.translator, "used_bytes", lambda device: 0)


def test_an_image_over_the_request_budget_is_tiled_and_one_no_tile_fits_fails_alone(
        translator: Translator, holding_nothing: None, caplog: pytest.LogCaptureFixture) -> None:
    small, large = pixels((24, 20), 1), pixels((1200, 1000), 2)
    assert forward_bytes(TINY, 20, 24) < 80 * MiB < 150 * MiB < forward_bytes(TINY, 1000, 1200)
    items = [TranslateItem(large, "AtoB", 150 * MiB), TranslateItem(small, "AtoB", 80 * MiB),
             TranslateItem(large, "AtoB", 80 * MiB)]
    with caplog.at_level(logging.INFO, logger="cyclegan_core.inference.translator"):
        tiled, fits, refused = translate_items(translator, items, "1")
    assert any("tile(s)" in record.getMessage() for record in caplog.records)
    assert decoded(tiled).shape == (1000, 1200, 3)
    assert np.array_equal(decoded(fits), np.asarray(translator([Image.fromarray(small)])[0]))
    assert refused.client_error and refused.error.startswith("too large for the memory budget (80.00 MiB): ")
    assert "raise the budget" in refused.error


def test_a_request_budget_never_exceeds_the_replicas(translator: Translator) -> None:
    from pipelines.serving.model import with_budget

    translator.memory_budget = 100 * MiB
    try:
        assert with_budget(translator, 2**40).memory_budget == 100 * MiB
        assert with_budget(translator, MiB).memory_budget == MiB
        assert with_budget(translator, None) is translator
    finally:
        translator.memory_budget = None


def test_a_replica_loads_through_load_translator_with_the_settings_choice(tmp_path: Path, holding_nothing: None
                                                                         ) -> None:
    torch.manual_seed(0)
    nets = [build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm) for _ in range(2)]
    folder = Translator(nets[0], nets[1], TINY).save_pretrained(tmp_path / "model")
    loaded = load_for_serving(folder, settings(backend="torch", precision="fp32", memory_budget=100 * MiB,
                                               cache_dir=tmp_path / "cache"))
    assert isinstance(loaded, Translator) and loaded.memory_budget == 100 * MiB
    assert loaded.describe().startswith("torch fp32")
    image = Image.fromarray(pixels((16, 12), 0))
    official = Translator(nets[0], nets[1], TINY, precision="fp32")([image])[0]
    assert np.array_equal(np.asarray(loaded([image])[0]), np.asarray(official))


def test_a_direction_the_model_lacks_is_a_client_error() -> None:
    one = Translator(build_generator(TINY.generator, ngf=TINY.ngf), None, TINY, precision="fp32")
    (answer,) = translate_items(one, [TranslateItem(pixels((8, 8), 0), "BtoA", None)], "1")
    assert answer.client_error and "no BtoA generator" in answer.error


# --- the rollout flow's wait on a server -----------------------------------------------------------------


@contextmanager
def running(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Status(BaseHTTPRequestHandler):
    """A /served-version that reports v1, then v2 from its third answer on."""

    answered = 0

    def do_GET(self) -> None:
        type(self).answered += 1
        version = "2" if type(self).answered >= 3 else "1"
        body = json.dumps({"model": "m", "version": version, "since": "t", "state": "x",
                           "last_failure": None}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_the_rollout_wait_returns_once_the_server_serves_the_version() -> None:
    with running(ThreadingHTTPServer(("127.0.0.1", 0), Status)) as port:
        check = wait_until_served(f"http://127.0.0.1:{port}", model="m", version="2", timeout_s=10, poll_s=0.05)
    assert check.served and check.detail == "serves v2 since t"


def test_the_rollout_wait_reports_an_unreachable_server_after_its_timeout() -> None:
    check = wait_until_served(f"http://127.0.0.1:{free_port()}", model="m", version="2", timeout_s=0.2, poll_s=0.05)
    assert not check.served and check.detail.startswith("unreachable") and check.detail.endswith("after 0.2 s")


def test_the_rollout_summary_names_what_each_server_serves() -> None:
    outcome = RolloutOutcome(model_name="m", alias="champion", requested="2", version="2", action="rollout",
                             reason="r", triggered_by="t", served={"http://model-server:5001": "serves v2 since t"})
    assert "- model server `http://model-server:5001`: serves v2 since t" in summary_markdown(outcome)
