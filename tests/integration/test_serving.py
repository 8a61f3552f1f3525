"""`cyclegan serve` on real components: a real `mlflow server` (the session's), the local Ray and Ray
Serve the command starts itself, and, for the contract, a real `mlflow models serve` of the same version.

One server process serves the whole module (Ray and Serve take 10-20 s to start here); the tests run in
file order: the contract and the pixels on v1, the refusals, then the switch to v2 and the broken v3,
and last the SIGTERM that stops it all.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.clients.embedded import free_port
from pipelines.promotion.state import record_rollout
from tests.conftest import _stop_process_group, wait_http
from tests.integration.test_registry import (
    export_tiny_model,
    make_config,
    make_report,
    make_train,
    png_bytes,
)

BIN = Path(sys.executable).parent
IMAGE = Image.fromarray(np.random.default_rng(5).integers(0, 256, (18, 26, 3), dtype=np.uint8))  # padded to 28x20
OTHER = Image.fromarray(np.random.default_rng(6).integers(0, 256, (16, 24, 3), dtype=np.uint8))
MAX_BODY = 2**20


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def post(url: str, path: str, body: bytes, content_type: str = "application/json"
         ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def invoke(url: str, payload: dict) -> tuple[int, dict]:
    status, _, body = post(url, "/invocations", json.dumps(payload).encode())
    return status, json.loads(body)


def request_body(*images: Image.Image | str, direction: str = "AtoB", **params: str) -> dict:
    """The request README "Serving" documents: one base64 PNG per row."""
    rows = [[image if isinstance(image, str) else base64.b64encode(png_bytes(image)).decode()] for image in images]
    return {"dataframe_split": {"columns": ["image"], "data": rows}, "params": {"direction": direction, **params}}


def pixels(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def served_version(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/served-version", timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def versions(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Versions 1 (champion, seed 3) and 2 (seed 4, not promoted: a lower score) of a tiny model."""
    from pipelines.registry import register_model

    root = tmp_path_factory.mktemp("served-models")
    name = f"served-{uuid.uuid4().hex[:6]}"
    generators = {"1": export_tiny_model(root / "one", seed=3), "2": export_tiny_model(root / "two", seed=4)}
    assert register_model(make_config(name, mlflow_server), make_train(generators["1"], "run-1"),
                          make_report(20.0)).promoted
    assert not register_model(make_config(name, mlflow_server), make_train(generators["2"], "run-2"),
                              make_report(10.0)).promoted
    return {"name": name, "generators": generators}


FIXED_CHOICE = ("--backend", "torch", "--precision", "fp32")


def official_translation(generators_dir: Path, image: Image.Image) -> np.ndarray:
    """What the servers of this module answer: the official computation (torch fp32)."""
    from cyclegan_core.inference.backends import load_translator

    translator = load_translator(generators_dir, backend="torch", precision="fp32", device="cpu")
    return np.asarray(translator([image])[0])


def launch(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def servers(mlflow_server: str, versions: dict, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Server, str]]:
    """Started side by side: `cyclegan serve --model <name>` (1 MiB body limit, the rollout read every
    0.5 s) and `mlflow models serve -m models:/<name>/1 --env-manager local` (MLflow's own server), both
    on the official computation (torch fp32): `auto` is measured per thread count, and the two run on
    different thread counts, so only a fixed choice makes their answers comparable byte for byte."""
    root = tmp_path_factory.mktemp("serve")
    ours, theirs = free_port(), free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("RAY_ADDRESS", None)
    server = Server(f"http://127.0.0.1:{ours}", launch(
        [str(BIN / "cyclegan"), "serve", "--model", str(versions["name"]), "--port", str(ours), "--poll-s", "0.5",
         "--retry-after-s", "600", "--max-body-size", str(MAX_BODY), "--replica-cpus", "1",
         *FIXED_CHOICE],
        env, root / "cyclegan-serve.log"), root / "cyclegan-serve.log")
    # the venv's bin on PATH, as `source .venv/bin/activate` puts it: MLflow's server execs `uvicorn`
    mlflow_serve = launch(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{versions['name']}/1", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(theirs), "-w", "1"],
        {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CYCLEGAN_BACKEND": "torch",
         "CYCLEGAN_PRECISION": "fp32"}, root / "mlflow-serve.log")
    try:
        wait_http(f"{server.url}/ping", timeout_s=240, process=server.process)
        wait_http(f"http://127.0.0.1:{theirs}/ping", timeout_s=240, process=mlflow_serve)
        yield server, f"http://127.0.0.1:{theirs}"
    finally:
        _stop_process_group(mlflow_serve)
        server.process.terminate()  # as a container's stop: the command's own process, which stops Ray
        try:
            server.process.wait(timeout=90)
        finally:
            _stop_process_group(server.process, timeout_s=5)
            print(server.output()[-6000:])


@pytest.fixture(scope="module")
def server(servers: tuple[Server, str]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def mlflow_scoring(servers: tuple[Server, str]) -> str:
    return servers[1]


def test_the_answers_are_those_of_mlflow_models_serve(server: Server, mlflow_scoring: str) -> None:
    body = json.dumps(request_body(IMAGE, OTHER, direction="BtoA")).encode()
    ours, theirs = post(server.url, "/invocations", body), post(mlflow_scoring, "/invocations", body)
    assert ours[0] == theirs[0] == 200, ours
    assert ours[2] == theirs[2]  # byte for byte: the same PNGs, base64-encoded the same way
    assert ours[1]["x-model-version"] == "1"
    bad = json.dumps(request_body(base64.b64encode(b"not an image at all").decode())).encode()
    (status, _, ours_bad), (their_status, _, theirs_bad) = post(server.url, "/invocations", bad), \
        post(mlflow_scoring, "/invocations", bad)
    assert status == their_status == 400
    assert json.loads(ours_bad)["error_code"] == json.loads(theirs_bad)["error_code"] == "INVALID_PARAMETER_VALUE"
    for answer in (ours_bad, theirs_bad):
        assert "image row 0: not a readable image" in json.loads(answer)["message"]
    for path in ("/ping", "/health", "/version"):
        with urllib.request.urlopen(server.url + path) as a, urllib.request.urlopen(mlflow_scoring + path) as b:
            assert (a.status, a.read()) == (b.status, b.read()), path


def test_served_pixels_are_those_of_cyclegan_translate(
    server: Server, versions: dict, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    status, answer = invoke(server.url, request_body(IMAGE, direction="BtoA"))
    assert status == 200, answer
    status, headers, png = post(server.url, "/translate?direction=BtoA", png_bytes(IMAGE), "image/png")
    assert status == 200 and headers["content-type"] == "image/png"

    (tmp_path / "in.png").write_bytes(png_bytes(IMAGE))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    done = CliRunner().invoke(app, ["translate", "--model", f"models:/{versions['name']}@champion", *FIXED_CHOICE,
                                    "--direction", "BtoA", str(tmp_path / "in.png"), str(tmp_path / "cli.png")])
    assert done.exit_code == 0, done.output
    expected = np.asarray(Image.open(tmp_path / "cli.png"))
    assert expected.shape == (18, 26, 3)
    assert np.array_equal(pixels(answer["predictions"][0]["image"]), expected)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


@pytest.mark.parametrize(("payload", "reason"), [
    (request_body(base64.b64encode(b"GIF89a broken").decode()), "image row 0: not a readable image"),
    (request_body("not base64 at all!"), "Failed to convert column image"),
    (request_body(IMAGE, direction="CtoD"), "param direction must be one of ('AtoB', 'BtoA'), got 'CtoD'"),
    (request_body(IMAGE, memory_budget="lots"), "param memory_budget: memory size 'lots' is not a number"),
    ({"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}, "input needs a column 'image'"),
    ({"rows": []}, "exactly one of the input fields"),
], ids=["not-an-image", "not-base64", "direction", "memory-budget", "no-image-column", "no-input-field"])
def test_a_bad_request_gets_a_400_saying_what_is_wrong(server: Server, payload: dict, reason: str) -> None:
    status, answer = invoke(server.url, payload)
    assert status == 400 and reason in answer["message"], answer


def test_a_body_over_the_limit_is_refused_with_413(server: Server) -> None:
    status, _, body = post(server.url, "/invocations", b" " * (MAX_BODY + 1))
    assert status == 413 and "1.00 MiB" in json.loads(body)["message"]
    # without a Content-Length (chunked), the body is counted as it arrives
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    conn.request("POST", "/translate", body=iter([b"x" * 2**19] * 3), headers={"Content-Type": "image/png"},
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    conn.close()


def test_with_ray_address_it_deploys_onto_that_cluster_and_detach_leaves_it_running(
    ray_head: dict[str, str], versions: dict, mlflow_server: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**ray_head, "MLFLOW_TRACKING_URI": mlflow_server}
    done = subprocess.run([str(BIN / "cyclegan"), "serve", "--model", str(versions["name"]), "--port", str(port),
                           "--detach"], check=False, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "detached" in done.stderr, done.stderr
        wait_http(f"{url}/ping", timeout_s=180)  # the watcher, on the cluster, deployed v1 after the command left
        assert served_version(url)["version"] == "1"
        status, answer = invoke(url, request_body(IMAGE))
        assert status == 200, answer
    finally:  # Serve's shutdown from a driver of that cluster (never a Ray in this process)
        subprocess.run([sys.executable, "-c", "import ray; from ray import serve; ray.init(); serve.shutdown()"],
                       check=True, env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_the_served_version_follows_the_rollout_without_a_failed_request_and_a_broken_one_keeps_the_old(
    server: Server, versions: dict, mlflow_server: str
) -> None:
    name, generators = str(versions["name"]), versions["generators"]
    client = MlflowClient(mlflow_server, mlflow_server)
    expected = {v: official_translation(generators[v], IMAGE) for v in ("1", "2")}
    assert not np.array_equal(expected["1"], expected["2"])
    assert served_version(server.url)["version"] == "1"  # no rollout recorded yet: the alias's version

    # Four clients keep asking, paced (the new replicas' start shares the host's two cores), while the
    # rollout flow's record moves to v2.
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.wait(0.1):
            status, headers, _ = post(server.url, "/invocations", json.dumps(request_body(IMAGE)).encode())
            answers.append((status, headers.get("x-model-version", "")))

    clients = [threading.Thread(target=keep_asking, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    client.set_registered_model_alias(name, "champion", "2")
    record_rollout(client, name, "champion", "2", by="test", flow_run="test-run")
    try:
        wait_for(lambda: served_version(server.url)["version"] == "2", "the server switched to v2")
        time.sleep(1)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    status = served_version(server.url)
    assert status["model"] == name and status["since"] and status["last_failure"] is None
    assert {code for code, _ in answers} == {200}, answers
    assert {version for _, version in answers} == {"1", "2"}, "both versions answered during the switch"
    status_code, answer = invoke(server.url, request_body(IMAGE))
    assert status_code == 200 and np.array_equal(pixels(answer["predictions"][0]["image"]), expected["2"])

    # A version whose model cannot be loaded (its source holds no model): v2 keeps serving, the failure
    # is reported at /served-version and in the server's log.
    run_id = client.get_model_version(name, "2").run_id
    broken = str(client.create_model_version(name, f"runs:/{run_id}/no-such-model", run_id=run_id).version)
    record_rollout(client, name, "champion", broken, by="test", flow_run="test-run")
    wait_for(lambda: (served_version(server.url).get("last_failure") or {}).get("version") == broken,
             f"the load of v{broken} was reported failed")
    status = served_version(server.url)
    failed = f"v{broken} failed to load; v2 stays served, v{broken} is tried again 600 s after its failure"
    assert status["version"] == "2" and status["state"] == failed, status
    reason = status["last_failure"]["reason"]
    assert reason.startswith(f"{name} v{broken} failed to load: RegistryError: "), reason
    status_code, answer = invoke(server.url, request_body(IMAGE))
    assert status_code == 200 and np.array_equal(pixels(answer["predictions"][0]["image"]), expected["2"])
    wait_for(lambda: f"ERROR pipelines.serving.server: {failed}: {reason}" in server.output(), "the failure's log line",
             timeout_s=10)


def test_sigterm_stops_the_server_and_every_process_it_started(server: Server) -> None:
    started = psutil.Process(server.process.pid).children(recursive=True)
    assert any("raylet" in " ".join(child.cmdline()) for child in started), [c.cmdline() for c in started]
    os.kill(server.process.pid, signal.SIGTERM)
    assert server.process.wait(timeout=90) == 0, server.output()[-3000:]
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [(p.pid, p.cmdline()) for p in alive if p.is_running()]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/ping", timeout=5)
    assert "model server stopped" in server.output()
