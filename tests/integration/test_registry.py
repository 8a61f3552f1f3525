"""MLflow registry stage against a real `mlflow server` (SQLite backend): logging, the promotion gate,
manual promotion, idempotent retries, loading the champion as a pyfunc and through the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.backends import load_translator
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator
from pipelines.config import PipelineConfig, RegistrySettings, ResolvedConfig, resolve
from pipelines.records import EvalReport, TrainResult
from pipelines.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    champion_identity,
    download_model,
    promote,
    register_model,
)
from pipelines.registry.logged_models import version_model_id
from pipelines.retry import RetryPolicy, is_transient
from pipelines.tracking.experiment import ensure_experiment

FAST_RETRY = RetryPolicy(attempts=2, base_delay_s=0.05)
TINY = ModelConfig(generator="resnet_6blocks", ngf=4, norm="instance")


def export_tiny_model(dest: Path, seed: int) -> Path:
    """Two tiny random generators saved as the train stage exports a trained model."""
    torch.manual_seed(seed)
    nets = [build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm) for _ in range(2)]
    Translator(nets[0], nets[1], TINY).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-models")
    return {"one": export_tiny_model(root / "one", seed=1), "two": export_tiny_model(root / "two", seed=2)}


@pytest.fixture(scope="module")
def sample_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry-eval") / "samples_AtoB.png"
    Image.new("RGB", (16, 8), (200, 10, 10)).save(path)
    return path


@pytest.fixture()
def model_name(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"


def make_config(model_name: str, tracking_uri: str = "sqlite:///unused.db", **registry: object) -> ResolvedConfig:
    config = PipelineConfig(
        dataset_uri="s3://bucket/synth",
        registry=RegistrySettings(model_name=model_name, experiment=f"exp-{model_name}", **registry),
    )
    return resolve(config, env={"MLFLOW_TRACKING_URI": tracking_uri})


FINGERPRINT = make_config("m").fingerprint


def make_train(generators_dir: Path, run_name: str, dataset_version: str = "data-v1") -> TrainResult:
    return TrainResult(
        run_name=run_name,
        checkpoint_uri=f"/ckpt/{run_name}/checkpoint_000002",
        generators_dir=generators_dir,
        dataset_version=dataset_version,
        dataset_uri="s3://bucket/synth",
        fingerprint=FINGERPRINT,
        steps=20,
        epochs=2,
        metrics={"G_A": 0.5},
        history=[{"epoch": 1, "G_A": 0.9, "D_A": 0.3}, {"epoch": 2, "G_A": 0.5, "D_A": 0.2}],
    )


def make_report(psnr: float, grid: Path | None = None) -> EvalReport:
    return EvalReport(
        metrics={"psnr_AtoB": psnr, "cycle_l1_A": 0.1},
        primary_metric="psnr_AtoB",
        primary_value=psnr,
        artifacts={"samples_AtoB": grid} if grid else {},
    )


def aliases(uri: str, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient(uri, uri).get_registered_model(name).aliases.items()}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def direct_translation(generators_dir: Path, image: Image.Image, direction: str = "AtoB") -> np.ndarray:
    """The generators' translation as every default path makes it here (the measured auto of this host)."""
    translator = load_translator(generators_dir, device="cpu")
    return np.asarray(translator([image], direction=direction)[0])


def test_input_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))


test_input_image.__test__ = False  # a helper, not a test


# --- against the real MLflow server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gated(mlflow_server: str, models: dict[str, Path], sample_grid: Path) -> dict[str, object]:
    """One model, three registrations: v1 first (champion), v2 worse (stays challenger), v3 better."""
    name = f"gated-{uuid.uuid4().hex[:6]}"
    config = make_config(name, mlflow_server)
    trains = [
        make_train(models["one"], "run-1"),
        make_train(models["two"], "run-2"),
        make_train(models["two"], "run-3", "data-v2"),
    ]
    refs = [
        register_model(config, trains[0], make_report(20.0, sample_grid)),
        register_model(config, trains[1], make_report(19.0)),
    ]
    after_worse = aliases(mlflow_server, name)
    refs.append(register_model(config, trains[2], make_report(22.5)))
    return {"name": name, "config": config, "trains": trains, "refs": refs, "after_worse": after_worse}


def test_gate_promotes_better_and_keeps_champion_against_worse(mlflow_server: str, gated: dict) -> None:
    first, worse, better = gated["refs"]
    assert first.version == "1" and first.promoted and set(first.aliases) == {CHAMPION, CHALLENGER}
    assert "no champion yet" in first.reason
    assert worse.version == "2" and not worse.promoted and "champion stays" in worse.reason
    assert gated["after_worse"] == {CHAMPION: "1", CHALLENGER: "2"}
    assert better.version == "3" and better.promoted and "challenger wins" in better.reason
    assert champion_identity(gated["name"], tracking_uri=mlflow_server) == ("data-v2", FINGERPRINT)

    client = MlflowClient(mlflow_server, mlflow_server)
    tags = client.get_model_version(gated["name"], "1").tags
    assert tags["primary_metric"] == "psnr_AtoB" and float(tags["primary_metric_value"]) == 20.0
    assert tags["dataset_version"] == "data-v1" and tags["train_run_name"] == "run-1"
    assert tags["training_fingerprint"] == FINGERPRINT and tags["gate_decision"] == "promoted"
    # the model card: the worse version says what it lost to
    worse_version = client.get_model_version(gated["name"], "2")
    assert float(worse_version.tags["champion_metric_value"]) == 20.0 and worse_version.tags["best_epoch"] == "last (2)"
    assert worse_version.tags["code_version"].startswith("cyclegan-pipeline ")
    assert "champion's value at the gate: 20" in worse_version.description
    assert "gate: kept_champion" in worse_version.description


def test_one_run_holds_params_metrics_lineage_and_artifacts(mlflow_server: str, gated: dict) -> None:
    client = MlflowClient(mlflow_server, mlflow_server)
    run_id = gated["refs"][0].run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-1"
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["registry.model_name"] == gated["name"]
    # the resolved config that trained, as the user wrote it: absolute paths, run.run_name unsuffixed, no services
    assert run.data.params["run.run_name"] == "cyclegan" and Path(run.data.params["cache_dir"]).is_absolute()
    assert not any(key.startswith("services.") for key in run.data.params)
    assert run.data.metrics["psnr_AtoB"] == 20.0 and run.data.metrics["cycle_l1_A"] == 0.1
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/G_A")] == [(1, 0.9), (2, 0.5)]
    assert run.data.tags["dataset_uri"] == "s3://bucket/synth" and run.data.tags["training_fingerprint"] == FINGERPRINT
    assert run.data.tags["checkpoint_uri"] == "/ckpt/run-1/checkpoint_000002" and run.data.tags["git_sha"]
    assert run.data.tags["dataset_version"] == "data-v1" and run.data.tags["ray_run_name"] == "run-1"
    logged = {a.path for folder in ("", "eval", "records") for a in client.list_artifacts(run_id, folder)}
    assert {"eval/samples_AtoB.png", "records/config.yaml", "records/eval_report.json"} <= logged
    assert "generators" not in logged, "the generators are logged once, inside the pyfunc model"
    logged_config = yaml.safe_load((Path(client.download_artifacts(run_id, "records/config.yaml"))).read_text())
    assert logged_config == gated["config"].user_config().model_dump(mode="json")
    (model_output,) = run.outputs.model_outputs
    model_files = client.list_logged_model_artifacts(model_output.model_id, "artifacts/generators/G_AB")
    assert {Path(f.path).name for f in model_files} == {"config.json", "model.safetensors"}
    # the registered version was created from that LoggedModel, named after the exported epoch
    model = client.get_logged_model(model_output.model_id)
    assert model.name == "epoch-0002" and model.source_run_id == run_id and model_output.step == 2
    assert model.tags["checkpoint_uri"] == "/ckpt/run-1/checkpoint_000002" and model.tags["epoch"] == "2"
    assert model.tags["training_fingerprint"] == FINGERPRINT and model.tags["dataset_version"] == "data-v1"
    assert version_model_id(client.get_model_version(gated["name"], "1")) == model.model_id
    linked = {m.key: m for m in model.metrics}  # the evaluation's metrics, linked to the model and the data
    assert linked["psnr_AtoB"].value == 20.0 and linked["psnr_AtoB"].step == 2
    assert (linked["psnr_AtoB"].dataset_name, linked["psnr_AtoB"].dataset_digest) == ("synth@data-v1", "data-v1")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.search_runs([experiment.experiment_id])) == 3


def test_same_training_result_twice_yields_one_version(mlflow_server: str, gated: dict) -> None:
    again = register_model(gated["config"], gated["trains"][0], make_report(20.0))
    assert (again.version, again.run_id) == ("1", gated["refs"][0].run_id)
    assert "already registered as version 1" in again.reason
    client = MlflowClient(mlflow_server, mlflow_server)
    assert len(client.search_model_versions(f"name = '{gated['name']}'")) == 3
    assert aliases(mlflow_server, gated["name"]) == {CHAMPION: "3", CHALLENGER: "3"}


def test_champion_loads_as_pyfunc_in_a_clean_process_with_the_same_pixels(
    mlflow_server: str, models: dict[str, Path], gated: dict, tmp_path: Path
) -> None:
    image = test_input_image()
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    # -S skips site's .pth files, so the project's editable install is invisible: the model must
    # bring its own code (code_paths). cwd is tmp_path so the checkout is not on sys.path either.
    script = (
        "import sys; sys.path.append(sys.argv[1])\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
        "data = pd.DataFrame({'image': [open('in.png', 'rb').read()]})\n"
        "open('out_AtoB.png', 'wb').write(model.predict(data)['image'][0])\n"
        "open('out_BtoA.png', 'wb').write(model.predict(data, params={'direction': 'BtoA'})['image'][0])\n"
        "import cyclegan_core; print(cyclegan_core.__file__)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            script,
            sysconfig.get_paths()["purelib"],
            f"models:/{gated['name']}@champion",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    project = str(Path(__file__).resolve().parents[2])
    assert not result.stdout.strip().splitlines()[-1].startswith(project)  # loaded from the model's code
    for direction in ("AtoB", "BtoA"):  # the champion is v3, trained as models["two"]
        served = np.asarray(Image.open(tmp_path / f"out_{direction}.png"))
        assert served.shape == (12, 20, 3)
        assert np.array_equal(served, direct_translation(models["two"], image, direction))


def test_download_model_resolves_alias_version_and_run_uris(
    mlflow_server: str, models: dict[str, Path], gated: dict, tmp_path: Path
) -> None:
    local = download_model(
        f"models:/{gated['name']}@champion", tmp_path / "champion", tracking_uri=mlflow_server
    )
    by_version = download_model(f"models:/{gated['name']}/1", tmp_path / "v1", tracking_uri=mlflow_server)
    by_run = download_model(
        f"runs:/{gated['refs'][0].run_id}/epoch-0002", tmp_path / "run", tracking_uri=mlflow_server
    )
    weights = "G_AB/model.safetensors"
    assert (local / weights).read_bytes() == (models["two"] / weights).read_bytes()
    assert (local / "G_BA" / "config.json").is_file()
    for folder in (by_version, by_run):
        assert (folder / weights).read_bytes() == (models["one"] / weights).read_bytes()
    with pytest.raises(RegistryError, match="not an empty folder"):
        download_model(f"models:/{gated['name']}/1", tmp_path / "v1", tracking_uri=mlflow_server)
    with pytest.raises(RegistryError, match="cannot download"):
        download_model(f"models:/{gated['name']}@nobody", tmp_path / "none", tracking_uri=mlflow_server)
    assert not (tmp_path / "none").exists()


def test_cyclegan_translate_with_the_champion_gives_the_same_pixels(
    mlflow_server: str, models: dict[str, Path], gated: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    image = test_input_image()
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    for direction in ("AtoB", "BtoA"):
        out = tmp_path / f"out_{direction}.png"
        args = ["translate", "--model", f"models:/{gated['name']}@champion", "--direction", direction]
        result = CliRunner().invoke(app, [*args, str(tmp_path / "in.png"), str(out)])
        assert result.exit_code == 0, result.output
        assert f"models:/{gated['name']}@champion resolved to version 3 of {gated['name']}" in result.output
        served = np.asarray(Image.open(out))
        assert np.array_equal(served, direct_translation(models["two"], image, direction))


def test_manual_promote_moves_champion_and_checks_the_version(mlflow_server: str, gated: dict) -> None:
    name = gated["name"]
    try:
        ref = promote(name, 2, tracking_uri=mlflow_server)
        assert ref.version == "2" and CHAMPION in ref.aliases and "from version 3 to 2" in ref.reason
        assert aliases(mlflow_server, name) == {CHAMPION: "2", CHALLENGER: "3"}
        assert champion_identity(name, tracking_uri=mlflow_server) == ("data-v1", FINGERPRINT)
    finally:
        promote(name, 3, tracking_uri=mlflow_server)
    with pytest.raises(RegistryError, match=r"has no version '7'; existing versions: \['1', '2', '3'\]"):
        promote(name, 7, tracking_uri=mlflow_server)
    with pytest.raises(RegistryError, match="no registered model 'no-such-model"):
        promote("no-such-model-xyz", 1, tracking_uri=mlflow_server)


def test_register_and_promote_cli(
    mlflow_server: str, gated: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(gated["config"].user_config().model_dump(mode="json")))
    (tmp_path / "train.json").write_text(gated["trains"][0].model_dump_json())
    (tmp_path / "eval.json").write_text(make_report(20.0).model_dump_json())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    records = ["--train-result", str(tmp_path / "train.json"), "--eval-report", str(tmp_path / "eval.json")]
    registered = CliRunner().invoke(
        app, ["register", *records, "--config", str(tmp_path / "config.yaml"), "--json"]
    )
    assert registered.exit_code == 0, registered.output
    ref = json.loads(registered.stdout.strip().splitlines()[-1])
    assert ref["version"] == "1" and ref["run_id"] == gated["refs"][0].run_id  # idempotent: no new version

    missing = CliRunner().invoke(app, ["promote", gated["name"], "5"])
    assert missing.exit_code == 4 and "existing versions"  # ExitCode.REFUSED in " ".join(missing.output.split())
    moved = CliRunner().invoke(app, ["promote", gated["name"], "1", "--alias", "staging", "--json"])
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.stdout.strip().splitlines()[-1])["aliases"] == ["staging"]

    broken = CliRunner().invoke(app, ["register", *records, "--config", str(tmp_path / "missing.yaml")])
    assert broken.exit_code == 4 and "missing.yaml"  # ExitCode.REFUSED in " ".join(broken.output.split())


def test_gate_leaves_champion_alone_when_auto_promote_is_off(
    mlflow_server: str, models: dict[str, Path], model_name: str
) -> None:
    ref = register_model(
        make_config(model_name, mlflow_server, auto_promote=False),
        make_train(models["one"], "run-a"),
        make_report(30.0),
    )
    assert not ref.promoted and ref.aliases == [CHALLENGER] and "auto_promote is off" in ref.reason
    assert champion_identity(model_name, tracking_uri=mlflow_server) is None


def test_half_registered_version_is_completed_on_retry(
    mlflow_server: str, models: dict[str, Path], model_name: str
) -> None:
    config, train = make_config(model_name, mlflow_server), make_train(models["one"], "run-half")
    first = register_model(config, train, make_report(20.0))
    client = MlflowClient(mlflow_server, mlflow_server)
    # The state an attempt leaves when it dies after creating the version, before aliases and gate.
    for alias in (CHAMPION, CHALLENGER):
        client.delete_registered_model_alias(model_name, alias)
    client.delete_model_version_tag(model_name, first.version, "gate_decision")

    retried = register_model(config, train, make_report(20.0))
    assert retried.version == first.version and retried.promoted and "no champion yet" in retried.reason
    assert aliases(mlflow_server, model_name) == {CHAMPION: "1", CHALLENGER: "1"}
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1

    # An attempt that died after logging the run, before creating the version: the finished run is
    # reused (shown here by registering the same result under a second model name).
    second = config.model_copy(
        update={"registry": config.registry.model_copy(update={"model_name": f"{model_name}-b"})}
    )
    other = register_model(second, train, make_report(20.0))
    assert other.run_id == first.run_id and other.version == "1"
    assert (
        len(client.search_runs([client.get_experiment_by_name(config.registry.experiment).experiment_id]))
        == 1
    )


# A registering client that stops inside log_run, its run RUNNING, until the test SIGKILLs it.
PAUSED_REGISTRATION = """
import sys, time
from pathlib import Path
import yaml
from pipelines.config import PipelineConfig, resolve
from pipelines.records import EvalReport, TrainResult
from pipelines.registry import logged_models, register_model

config_file, train_file, report_file, uri, marker = sys.argv[1:]
def paused(model_id, *args, **kwargs):  # the hook point: params, metrics, records logged, the model's files not
    from mlflow import MlflowClient
    Path(marker).write_text(MlflowClient(uri).get_logged_model(model_id).source_run_id)
    time.sleep(600)
logged_models.log_pyfunc = paused
config = resolve(PipelineConfig.model_validate(yaml.safe_load(open(config_file))), env={"MLFLOW_TRACKING_URI": uri})
register_model(config, TrainResult.model_validate_json(open(train_file).read()),
               EvalReport.model_validate_json(open(report_file).read()))
"""


def test_a_retry_marks_the_run_of_a_killed_registration_failed(
    mlflow_server: str, models: dict[str, Path], model_name: str, tmp_path: Path
) -> None:
    config, train, report = (
        make_config(model_name, mlflow_server),
        make_train(models["one"], "run-killed"),
        make_report(20.0),
    )
    files = {"config.yaml": yaml.safe_dump(config.user_config().model_dump(mode="json")),
             "train.json": train.model_dump_json(), "report.json": report.model_dump_json()}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    marker = tmp_path / "paused"
    client_process = subprocess.Popen([sys.executable, "-c", PAUSED_REGISTRATION, *(str(tmp_path / n) for n in files),
                                       mlflow_server, str(marker)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert client_process.poll() is None, client_process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the registering client never reached log_pyfunc"
            time.sleep(0.1)
    finally:
        client_process.kill()  # SIGKILL: no except/finally of the client runs
        client_process.wait(timeout=30)
    killed_run = marker.read_text()
    client = MlflowClient(mlflow_server, mlflow_server)
    assert client.get_run(killed_run).info.status == "RUNNING"

    ref = register_model(config, train, report)

    assert ref.version == "1" and ref.run_id != killed_run
    stale = client.get_run(killed_run)
    assert stale.info.status == "FAILED" and stale.info.end_time is not None
    assert "interrupted registration" in stale.data.tags["failed_reason"]
    experiment_id = client.get_experiment_by_name(config.registry.experiment).experiment_id
    statuses = {r.info.run_id: r.info.status for r in client.search_runs([experiment_id])}
    assert statuses == {killed_run: "FAILED", ref.run_id: "FINISHED"}


def test_sqlite_store_keeps_artifacts_in_mlartifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri, uri)
    experiment_id = ensure_experiment(client, "cyclegan", uri)
    assert client.get_experiment(experiment_id).artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert ensure_experiment(client, "cyclegan", uri) == experiment_id


def test_register_into_a_local_sqlite_store_with_no_tracking_variable(
    tmp_path: Path, models: dict[str, Path], model_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's store: a relative sqlite:/// URI, no MLFLOW_TRACKING_URI in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    config = resolve(make_config(model_name).user_config(), env={})
    assert config.services.tracking_uri == "sqlite:///mlruns.db"
    ref = register_model(config, make_train(models["one"], "sqlite-run"), make_report(20.0), retry=FAST_RETRY)
    assert ref.version == "1" and CHAMPION in ref.aliases
    assert aliases("sqlite:///mlruns.db", model_name) == {CHALLENGER: "1", CHAMPION: "1"}
    assert (tmp_path / "mlruns.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the caller's environment is left as it was
    local = download_model(f"models:/{model_name}@champion", tmp_path / "dl", tracking_uri="sqlite:///mlruns.db")
    image = test_input_image()
    translated = np.asarray(load_translator(local, device="cpu")([image])[0])
    assert np.array_equal(translated, direct_translation(models["one"], image))


def test_unreachable_server_fails_clearly(models: dict[str, Path]) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(
        RegistryError, match=f"tracking server {uri} is unreachable after 2 attempts"
    ) as caught:
        register_model(make_config("m", uri), make_train(models["one"], "run-x"), make_report(1.0), retry=FAST_RETRY)
    assert is_transient(caught.value)
