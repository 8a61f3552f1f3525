"""`cyclegan serve` follows the rollout: against the real `mlflow_server`, a real `cyclegan serve`
process serves the champion's version through MLflow's scoring contract, switches to the version the
rollout records (``rollout.champion.version``, written as the rollout flow writes it) without failing a
request during the switch, and keeps the old version serving when the new one cannot start."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.embedded import free_port
from pipelines.promotion.state import record_rollout
from tests.conftest import _stop_process_group, wait_http
from tests.integration.test_registry import (
    direct_translation,
    export_tiny_model,
    make_config,
    make_report,
    make_train,
    png_bytes,
)
from tests.integration.test_serving import invoke, request_body

CLI = str(Path(sys.executable).with_name("cyclegan"))
IMAGE = Image.fromarray(np.random.default_rng(7).integers(0, 256, (16, 24, 3), dtype=np.uint8))


def served_version(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/served-version", timeout=5) as response:
        return json.loads(response.read())


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def served_pixels(url: str) -> np.ndarray:
    status, answer = invoke(url, request_body(base64.b64encode(png_bytes(IMAGE)).decode()))
    assert status == 200, answer
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["predictions"][0]["image"]))))


@pytest.fixture(scope="module")
def versions(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Model versions 1 (champion, seed 3) and 2 (seed 4, not promoted: a lower score)."""
    from pipelines.registry import register_model

    root = tmp_path_factory.mktemp("switch-models")
    name = f"switch-{uuid.uuid4().hex[:6]}"
    generators = {"1": export_tiny_model(root / "one", seed=3), "2": export_tiny_model(root / "two", seed=4)}
    assert register_model(make_config(name, mlflow_server), make_train(generators["1"], "run-1"),
                          make_report(20.0)).promoted
    assert not register_model(make_config(name, mlflow_server), make_train(generators["2"], "run-2"),
                              make_report(10.0)).promoted
    return {"name": name, "generators": generators}


@pytest.fixture(scope="module")
def server(mlflow_server: str, versions: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of `cyclegan serve --model <name> --poll-s 0.5` (its log printed when a test fails)."""
    root = tmp_path_factory.mktemp("switch-serve")
    port = free_port()
    cmd = [CLI, "serve", "--model", str(versions["name"]), "--port", str(port), "--poll-s", "0.5",
           "--start-timeout-s", "120", "--retry-after-s", "600"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    with open(root / "serve.log", "wb") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", timeout_s=120, process=process)
        yield url
    finally:
        _stop_process_group(process)
        print((root / "serve.log").read_text()[-6000:])


@pytest.mark.slow
def test_the_served_model_follows_the_recorded_rollout_and_a_broken_version_keeps_the_old_one(
    server: str, versions: dict, mlflow_server: str
) -> None:
    name, generators = str(versions["name"]), versions["generators"]
    client = MlflowClient(mlflow_server, mlflow_server)
    expected = {v: direct_translation(generators[v], IMAGE) for v in ("1", "2")}
    assert not np.array_equal(expected["1"], expected["2"])

    # No rollout recorded yet: the alias's version.
    assert served_version(server)["version"] == "1"
    assert np.array_equal(served_pixels(server), expected["1"])

    # Requests keep being answered while the server switches.
    answers: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.wait(0.2):  # paced: the new server's start shares the host's CPUs
            answers.append(invoke(server, request_body(base64.b64encode(png_bytes(IMAGE)).decode()))[0])

    asking = threading.Thread(target=keep_asking, daemon=True)
    asking.start()
    client.set_registered_model_alias(name, "champion", "2")
    record_rollout(client, name, "champion", "2", by="test", flow_run="test-run")
    try:
        wait_for(lambda: served_version(server)["version"] == "2", "the server switched to v2")
    finally:
        stop.set()
        asking.join(timeout=60)
    status = served_version(server)
    assert status["model"] == name and status["since"]
    assert np.array_equal(served_pixels(server), expected["2"])
    assert answers and set(answers) == {200}, answers

    # A version whose model cannot be loaded (its source holds no model): v2 stays served, the failure
    # is reported.
    run_id = client.get_model_version(name, "2").run_id
    broken = client.create_model_version(name, f"runs:/{run_id}/no-such-model", run_id=run_id).version
    record_rollout(client, name, "champion", str(broken), by="test", flow_run="test-run")
    wait_for(lambda: (served_version(server).get("last_failure") or {}).get("version") == str(broken),
             f"the start of v{broken} was reported failed")
    status = served_version(server)
    assert status["version"] == "2"
    assert f"v{broken}" in status["last_failure"]["reason"] and "MLmodel" in status["last_failure"]["reason"]
    assert np.array_equal(served_pixels(server), expected["2"])
