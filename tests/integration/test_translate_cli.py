"""`cyclegan translate` end to end, run as the installed `cyclegan` entry point in a subprocess (exit codes,
the one-line errors, the files written): an exported tiny model, a folder with a corrupt file, a model
from a real local MLflow store through a runs:/ URI, and one served by a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import generator_from_config
from pipelines.cli.app import ExitCode

CFG = ModelConfig(generator="resnet_unet_adalin", ngf=4)
CLI = str(Path(sys.executable).with_name("cyclegan"))


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


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """An empty working folder for the command (where a stray mlruns.db would appear)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def cyclegan(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real entry point with no MLflow variable but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([CLI, *args], cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=300, check=False)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 4, stderr is exactly one `error:` line holding each fragment, and no traceback."""
    assert done.returncode == ExitCode.REFUSED, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- skipped inputs -----------------------------------------------------------------------------------


def test_skipped_inputs_exit_partial_with_a_summary(tmp_path: Path, model_dir: Path, images: Path,
                                                     workdir: Path) -> None:
    done = cyclegan("translate", "--model", str(model_dir), str(images), str(tmp_path / "out"),
                    "--direction", "BtoA", "--batch-size", "2", "--json", cwd=workdir)
    assert done.returncode == ExitCode.PARTIAL == 3, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["translated"] == 3 and summary["direction"] == "BtoA"
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["zero.png"]
    assert "empty" in summary["skipped"][0]["reason"]
    assert "translated 3 image(s)" in done.stdout and "zero.png: empty" in done.stdout
    assert error_lines(done) == [("error: skipped 1 unreadable input(s) (more than --max-skipped 0); 3 translated; "
                                  "--allow-skipped accepts skips")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.png", "three.png", "two.png"]
    assert Image.open(tmp_path / "out" / "three.png").size == (32, 24)


@pytest.mark.parametrize(("tolerance", "code"), [(["--max-skipped", "2"], ExitCode.OK),
                                                 (["--max-skipped", "1"], ExitCode.PARTIAL),
                                                 (["--allow-skipped"], ExitCode.OK)])
def test_skips_the_user_tolerates_exit_zero(tmp_path: Path, model_dir: Path, images: Path, workdir: Path,
                                            tolerance: list[str], code: ExitCode) -> None:
    (images / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # two unreadable inputs now
    done = cyclegan("translate", "--model", str(model_dir), str(images), str(tmp_path / "out"), *tolerance,
                    cwd=workdir)
    assert done.returncode == code, done.stderr
    assert "translated 3 image(s)" in done.stdout and "skipped 2:" in done.stdout
    assert (error_lines(done) == []) == (code == ExitCode.OK)


# --- refusals: one line, exit 4, nothing written ------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu_is_one_line(tmp_path: Path, model_dir: Path, images: Path,
                                               workdir: Path) -> None:
    done = cyclegan("translate", "--model", str(model_dir), str(images), str(tmp_path / "out"), "--device", "cuda",
                    cwd=workdir)
    assert_refused_in_one_line(done, "device cuda is not available", "no CUDA GPU", "use cpu")
    assert not (tmp_path / "out").exists()


def test_unknown_device_name_is_one_line(tmp_path: Path, model_dir: Path, images: Path, workdir: Path) -> None:
    done = cyclegan("translate", "--model", str(model_dir), str(images), str(tmp_path / "out"), "--device", "gpu",
                    cwd=workdir)
    assert_refused_in_one_line(done, "'gpu' is not a device name", "cpu, cuda, cuda:N or mps")


def test_writing_over_the_inputs_is_refused(model_dir: Path, images: Path, workdir: Path) -> None:
    before = sorted(p.name for p in images.iterdir())
    done = cyclegan("translate", "--model", str(model_dir), str(images), str(images), cwd=workdir)
    assert_refused_in_one_line(done, "refusing to write translations over the inputs")
    assert sorted(p.name for p in images.iterdir()) == before


def test_a_bad_model_path_is_refused(tmp_path: Path, images: Path, workdir: Path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    done = cyclegan("translate", "--model", str(tmp_path / "broken.pth"), str(images), str(tmp_path / "o"),
                    cwd=workdir)
    assert done.returncode == ExitCode.REFUSED
    assert "broken.pth is not a readable PyTorch checkpoint" in " ".join(error_lines(done))
    assert "Traceback" not in done.stderr


def test_an_empty_input_folder_is_refused(tmp_path: Path, model_dir: Path, workdir: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = cyclegan("translate", "--model", str(model_dir), str(tmp_path / "empty"), str(tmp_path / "o"),
                    cwd=workdir)
    assert_refused_in_one_line(done, "holds no images")


# --- the output file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "image_format"), [("result.jpg", "JPEG"), ("result.png", "PNG"),
                                                    ("result.webp", "WEBP")])
def test_a_single_file_is_written_in_the_format_its_name_asks(tmp_path: Path, model_dir: Path, images: Path,
                                                               workdir: Path, name: str, image_format: str) -> None:
    dest = tmp_path / "single" / name
    done = cyclegan("translate", "--model", str(model_dir), str(images / "one.png"), str(dest), "--json",
                    cwd=workdir)
    assert done.returncode == ExitCode.OK, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["outputs"] == [str(dest)]
    assert f"into {dest}" in done.stdout
    assert [p.name for p in dest.parent.iterdir()] == [name]
    with Image.open(dest) as written:
        assert written.format == image_format and written.size == (21, 17)


def test_an_output_name_with_an_unknown_extension_is_refused(tmp_path: Path, model_dir: Path, images: Path,
                                                             workdir: Path) -> None:
    done = cyclegan("translate", "--model", str(model_dir), str(images / "one.png"), str(tmp_path / "result.xyz"),
                    cwd=workdir)
    assert_refused_in_one_line(done, "'.xyz' is not an image extension", ".jpg", ".png")
    assert not (tmp_path / "result.xyz").exists()


# --- MLflow only for models:/ and runs:/ URIs, after the cheap checks ---------------------------------


def test_a_model_folder_leaves_no_mlflow_store_behind(tmp_path: Path, model_dir: Path, images: Path,
                                                      workdir: Path) -> None:
    done = cyclegan("translate", "--model", str(model_dir), str(images / "one.png"), str(tmp_path / "o"),
                    cwd=workdir)
    assert done.returncode == ExitCode.OK, done.stderr
    assert list(workdir.iterdir()) == []


def test_a_model_uri_without_a_store_is_refused_without_creating_one(tmp_path: Path, images: Path,
                                                                     workdir: Path) -> None:
    done = cyclegan("translate", "--model", "models:/tiny@champion", str(images), str(tmp_path / "o"), cwd=workdir)
    assert_refused_in_one_line(done, "the MLflow store sqlite:///mlruns.db does not exist", "MLFLOW_TRACKING_URI")
    assert list(workdir.iterdir()) == []


@pytest.fixture()
def local_store(tmp_path: Path, model_dir: Path) -> tuple[str, str]:
    """A real local MLflow store (SQLite + artifact folder) with the model logged to a run: (URI, runs:/ URI)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("translate-cli", artifact_location=(tmp_path / "store" / "art").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="generators")
    client.set_terminated(run.info.run_id)
    return uri, f"runs:/{run.info.run_id}/generators"


def test_refusals_come_before_the_model_download(tmp_path: Path, images: Path, workdir: Path,
                                                 local_store: tuple[str, str]) -> None:
    uri, model = local_store
    env = {"MLFLOW_TRACKING_URI": uri}
    over_inputs = cyclegan("translate", "--model", model, str(images), str(images), cwd=workdir, env=env)
    no_gpu = cyclegan("translate", "--model", model, str(images), str(tmp_path / "o"), "--device", "cuda:7",
                      cwd=workdir, env=env)
    for refused in (over_inputs, no_gpu):
        assert_refused_in_one_line(refused)  # nothing logged before the refusal: no download line
    ok = cyclegan("translate", "--model", model, str(images / "one.png"), str(tmp_path / "o"), cwd=workdir, env=env)
    assert ok.returncode == ExitCode.OK, ok.stderr
    assert f"downloaded {model}" in ok.stderr  # the same URI does download once the checks pass
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_translate_with_a_runs_uri_from_an_mlflow_server(tmp_path: Path, model_dir: Path, images: Path,
                                                         workdir: Path, mlflow_server: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("translate-cli-test")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("translate-cli-test")
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="generators")
    done = cyclegan("translate", "--model", f"runs:/{run.info.run_id}/generators", str(images / "one.png"),
                    str(tmp_path / "out"), "--json", cwd=workdir, env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert done.returncode == ExitCode.OK, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["translated"] == 1
    assert Image.open(tmp_path / "out" / "one.png").size == (21, 17)
