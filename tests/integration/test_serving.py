"""The registered champion served by a real `mlflow models serve` process (`--env-manager local`, the
project's venv) answers POST /invocations as README "Serving" documents: base64 PNG in, base64 PNG out,
the pixels `cyclegan translate` writes; a bad request gets a 400 that says what was wrong."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.embedded import free_port
from tests.conftest import _stop_process_group, wait_http
from tests.integration.test_registry import export_tiny_model, make_config, make_report, make_train, png_bytes

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture(scope="module")
def champion(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny model (resnet_6blocks, ngf 4) registered in the real MLflow server; the gate makes it champion."""
    from pipelines.registry import register_model

    name = f"served-{uuid.uuid4().hex[:6]}"
    model = export_tiny_model(tmp_path_factory.mktemp("served-model") / "model", seed=3)
    ref = register_model(make_config(name, mlflow_server), make_train(model, "run-served"), make_report(20.0))
    assert ref.promoted
    return f"models:/{name}@champion"


@pytest.fixture(scope="module")
def served(mlflow_server: str, champion: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of `mlflow models serve -m models:/<name>@champion --env-manager local` (one worker)."""
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    cmd = [MLFLOW, "models", "serve", "-m", champion, "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1",
           "-w", "1"]
    # the venv's bin on PATH, as `source .venv/bin/activate` puts it: the server execs `uvicorn` from PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PATH": path}
    with open(root / "serve.log", "wb") as log:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", timeout_s=120, process=process)
        yield url
    except Exception:
        print((root / "serve.log").read_text()[-5000:])
        raise
    finally:
        _stop_process_group(process)


def invoke(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def request_body(image_text: str, direction: str = "AtoB") -> dict:
    """The request README "Serving" documents."""
    return {"dataframe_split": {"columns": ["image"], "data": [[image_text]]}, "params": {"direction": direction}}


def test_served_champion_returns_the_pixels_of_cyclegan_translate(
    served: str, champion: str, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (18, 26, 3), dtype=np.uint8))  # 26x18: padded to 28x20
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    status, answer = invoke(served, request_body(base64.b64encode(png_bytes(image)).decode(), "BtoA"))
    assert status == 200, answer
    served_png = base64.b64decode(answer["predictions"][0]["image"])
    served_pixels = np.asarray(Image.open(io.BytesIO(served_png)))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    done = CliRunner().invoke(app, ["translate", "--model", champion, "--direction", "BtoA", str(tmp_path / "in.png"),
                                    str(tmp_path / "cli.png")])
    assert done.exit_code == 0, done.output
    assert served_pixels.shape == (18, 26, 3)
    assert np.array_equal(served_pixels, np.asarray(Image.open(tmp_path / "cli.png")))


def test_a_request_that_is_not_an_image_gets_a_400_saying_so(served: str) -> None:
    status, answer = invoke(served, request_body(base64.b64encode(b"not an image at all").decode()))
    assert status == 400
    assert "image row 0: not a readable image" in answer["message"], answer
