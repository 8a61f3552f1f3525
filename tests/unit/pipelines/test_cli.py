"""The CLI's exit codes and one-line errors, in process (typer's CliRunner): what each command refuses
before doing any work, and what an exception no command expected becomes."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.cli.app import CycleganGroup, ExitCode, main
from pipelines.registry.sources import missing_local_store

README = Path(__file__).resolve().parents[3] / "README.md"


def invoke(*args: str, target: typer.Typer = app) -> tuple[int, list[str]]:
    result = CliRunner().invoke(target, list(args))
    return result.exit_code, result.output.strip().splitlines()


def test_exit_codes_are_the_documented_ones() -> None:
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code): name for code, name in re.findall(r"^\| (\d) \| `(\w+)` \|", section, re.MULTILINE)}
    assert documented == {code.value: code.name for code in ExitCode}
    assert (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.PARTIAL, ExitCode.REFUSED) == (0, 1, 2, 3, 4)


def boom_app() -> typer.Typer:
    """An app like ``cyclegan`` (same group class and callback) with a command that raises."""
    boom = typer.Typer(cls=CycleganGroup)
    boom.callback()(main)

    @boom.command()
    def explode() -> None:
        raise RuntimeError("lost the thread\nsecond line of detail")

    @boom.command()
    def refused() -> None:  # Ray Client's message when the server fails to start a session
        raise ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n"
                                     '  File "proxier.py", line 778, in Datapath\n'
                                     "RuntimeError: Proxy failed to Connect to backend!\n")

    @boom.command()
    def other() -> None:
        pass

    return boom


def test_an_unexpected_exception_is_one_line_and_exit_1() -> None:
    code, lines = invoke("explode", target=boom_app())
    assert code == ExitCode.FAILED
    assert lines == ["error: RuntimeError: lost the thread (`cyclegan --verbose ...` shows the traceback)"]


def test_a_message_announcing_its_detail_keeps_the_last_line() -> None:
    code, lines = invoke("refused", target=boom_app())
    assert code == ExitCode.FAILED
    expected = ("error: ConnectionAbortedError: Initialization failure from server: RuntimeError: Proxy failed to "
                "Connect to backend! (`cyclegan --verbose ...` shows the traceback)")
    assert lines == [expected]


def test_verbose_lets_the_traceback_through() -> None:
    result = CliRunner().invoke(boom_app(), ["--verbose", "explode"])
    assert isinstance(result.exception, RuntimeError)
    assert str(result.exception) == "lost the thread\nsecond line of detail"  # the command's own exception
    assert result.exc_info is not None
    frames = [frame.name for frame in traceback.extract_tb(result.exc_info[2])]
    assert frames[-1] == "explode" and "invoke" in frames  # the whole traceback, from the group down
    assert "error: " not in result.output  # not turned into the one-line error


@pytest.mark.parametrize(
    "args",
    [["translate", "in", "out"], ["translate", "--model", "m", "i", "o", "--batch-size", "0"], ["no-such-command"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ExitCode.USAGE
    assert "error: " not in result.output  # typer's own usage message, not the catch-all line


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["train", "--config", "missing.yaml"], ExitCode.REFUSED, "cannot read pipeline config missing.yaml"),
        (["run", "missing.yaml"], ExitCode.REFUSED, "cannot read pipeline config missing.yaml"),
        (["train", "--config", "missing.yaml", "--set", "no-equals"], ExitCode.USAGE, "--set expects KEY=VALUE"),
        (["run", "missing.yaml", "--set", "train.lr=[1"], ExitCode.USAGE, "--set value '[1' is not valid YAML"),
        (
            ["upload", "missing-folder", "s3://bucket/prefix"],
            ExitCode.REFUSED,
            "cannot upload missing-folder: not a folder",
        ),
        (["ingest", "bucket/prefix"], ExitCode.REFUSED, "expected an S3 URI like s3://bucket/prefix"),
        (["translate", "--model", "m", "in", "out", "--direction", "AB"], ExitCode.USAGE, "--direction must be one of"),
        (
            ["translate", "--model", "m", "in", "out", "--precision", "int4"],
            ExitCode.USAGE,
            "--precision must be one of auto, fp32, bf16, fp16, int8, got 'int4'",
        ),
        (
            ["translate", "--model", "m", "in", "out", "--backend", "onnxruntime"],
            ExitCode.USAGE,
            "--backend must be one of auto, torch, openvino, got 'onnxruntime'",
        ),
        (
            ["translate", "--model", "m", "in", "out", "--backend", "torch", "--precision", "int8"],
            ExitCode.USAGE,
            "backend torch computes fp32, bf16, fp16, not int8; int8 needs backend openvino",
        ),
        (
            ["translate", "--model", "m", "in", "out", "--backend", "openvino", "--precision", "fp16"],
            ExitCode.USAGE,
            "backend openvino computes fp32, bf16, int8, not fp16; fp16 needs backend torch",
        ),
        (
            ["translate", "--model", "m", "s3://b/in", "s3://b/out", "--precision", "int8"],
            ExitCode.USAGE,
            "--precision int8 translates local files",
        ),
        (["translate", "--model", "m", "missing-input", "out"], ExitCode.REFUSED, "input missing-input does not exist"),
        (
            ["evaluate", "--model", "m", "--data", "missing-data", "--out", "o"],
            ExitCode.REFUSED,
            "missing-data/testA holds no test images",
        ),
    ],
)
def test_bad_inputs_are_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                            code: ExitCode, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    exit_code, lines = invoke(*args)
    assert exit_code == code
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_an_output_that_is_a_file_before_loading_anything(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    code, lines = invoke("evaluate", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data"),
                         "--out", str(tmp_path / "report.json"))
    expected = f"error: --out {tmp_path / 'report.json'} is a file; evaluate writes a folder (grids, eval_report.json)"
    assert code == ExitCode.REFUSED and lines == [expected]


def test_synth_into_a_non_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, lines = invoke("synth", str(tmp_path), "--train", "1", "--test", "1")
    assert code == ExitCode.REFUSED and len(lines) == 1 and "--overwrite" in lines[0]


def test_promote_without_a_store_creates_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, lines = invoke("promote", "cyclegan", "3")
    assert code == ExitCode.REFUSED
    assert lines == [("error: cannot promote cyclegan version 3: the MLflow store sqlite:///mlruns.db does not exist "
                      "(mlruns.db); set MLFLOW_TRACKING_URI to the tracking server or store that holds the model")]
    assert list(tmp_path.iterdir()) == []


def test_missing_local_store(tmp_path: Path) -> None:
    (tmp_path / "here.db").write_bytes(b"")
    assert missing_local_store(f"sqlite:///{tmp_path / 'gone.db'}") == tmp_path / "gone.db"
    assert missing_local_store(f"sqlite:///{tmp_path / 'here.db'}") is None
    assert missing_local_store(f"sqlite:///{tmp_path / 'gone.db'}?timeout=5") == tmp_path / "gone.db"
    assert missing_local_store((tmp_path / "mlruns").as_uri()) == tmp_path / "mlruns"
    assert missing_local_store(str(tmp_path)) is None
    assert missing_local_store("sqlite:///:memory:") is None
    assert missing_local_store("http://127.0.0.1:5000") is None
