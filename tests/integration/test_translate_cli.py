"""`cyclegan translate` end to end: an exported tiny model, a folder with a corrupt file, and a model
served by a real MLflow server through a runs:/ URI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cyclegan_core.config import ModelConfig
from cyclegan_core.networks import generator_from_config
from cyclegan_core.translator import Translator
from pipelines.cli import app

CFG = ModelConfig(generator="resnet_unet_adalin", ngf=4)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return Translator(generator_from_config(CFG), generator_from_config(CFG), CFG).save_pretrained(tmp_path / "model")


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("one.png", (21, 17)), ("two.jpg", (21, 17)), ("three.png", (32, 24))):
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    (folder / "zero.png").write_bytes(b"")
    return folder


def run_cli(*args: str) -> tuple[int, str, dict | None]:
    result = CliRunner().invoke(app, list(args))
    lines = result.stdout.strip().splitlines()
    payload = json.loads(lines[-1]) if "--json" in args and result.exit_code == 0 else None
    return result.exit_code, " ".join(result.output.split()), payload  # rich wraps long lines


def test_translate_folder_with_an_exported_model(tmp_path: Path, model_dir: Path, images: Path) -> None:
    code, output, summary = run_cli("translate", "--model", str(model_dir), str(images), str(tmp_path / "out"),
                                    "--direction", "BtoA", "--batch-size", "2", "--json")
    assert code == 0, output
    assert summary is not None and summary["translated"] == 3 and summary["direction"] == "BtoA"
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["zero.png"]
    assert "empty" in summary["skipped"][0]["reason"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.png", "three.png", "two.png"]
    assert Image.open(tmp_path / "out" / "three.png").size == (32, 24)
    assert "skipped 1" in output


def test_translate_refuses_to_write_over_the_inputs(model_dir: Path, images: Path) -> None:
    before = sorted(p.name for p in images.iterdir())
    code, output, _ = run_cli("translate", "--model", str(model_dir), str(images), str(images))
    assert code == 1
    assert "refusing" in output
    assert sorted(p.name for p in images.iterdir()) == before


def test_translate_reports_a_bad_model_path(tmp_path: Path, images: Path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    broken = str(tmp_path / "broken.pth")
    code, output, _ = run_cli("translate", "--model", broken, str(images), str(tmp_path / "o"))
    assert code == 1
    assert "broken.pth is not a readable PyTorch checkpoint" in output


@pytest.mark.slow
def test_translate_with_a_runs_uri_from_mlflow(tmp_path: Path, model_dir: Path, images: Path,
                                               mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("translate-cli-test")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="generators")
    code, output, summary = run_cli("translate", "--model", f"runs:/{run.info.run_id}/generators",
                                    str(images / "one.png"), str(tmp_path / "out"), "--json")
    assert code == 0, output
    assert summary is not None and summary["translated"] == 1
    assert Image.open(tmp_path / "out" / "one.png").size == (21, 17)
