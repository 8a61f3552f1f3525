"""The ``cyclegan`` Typer app and what its commands share: the exit codes, logging set-up, errors
without tracebacks, the JSON summary line, and the entry-point resolution of config and services (the
CLI, like the flow, is an entry point: the only places that read the environment)."""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipelines.config import (
    PipelineConfig,
    ResolvedConfig,
    Services,
    load_pipeline_config,
    resolve,
    services_from_env,
)
from pipelines.records import ModelVersionRef


class ExitCode(enum.IntEnum):
    """What ``cyclegan`` exits with (README "Exit codes"); scripts may rely on these values."""

    OK = 0
    FAILED = 1  # an error while working: a service, training, an unexpected exception
    USAGE = 2  # the command line itself is wrong (click's own code: unknown option, bad value)
    PARTIAL = 3  # translate: some inputs were skipped (more than --max-skipped); the others were written
    REFUSED = 4  # an input, path, config, device or model is missing or invalid: checked first, nothing written


_VERBOSE = "cyclegan.verbose"


class CycleganGroup(TyperGroup):
    """The app's command group: an exception no command expected becomes one ``error:`` line and exit 1
    (the traceback only with ``--verbose``), never a screen of traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits, and usage errors (exit 2: typer shows them)
            raise
        except Exception as exc:
            if ctx.meta.get(_VERBOSE):
                raise
            fail(f"{type(exc).__name__}: {one_line(str(exc))} (`cyclegan --verbose ...` shows the traceback)")


def one_line(message: str) -> str:
    """The first line of ``message``; a first line ending in ':' announces what follows (Ray Client's
    "Initialization failure from server:" and the server's traceback), so the last line is added."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


app = typer.Typer(
    name="cyclegan",
    cls=CycleganGroup,
    help="CycleGAN image-to-image translation: synthesise, ingest, train, evaluate, register, translate.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """Print one clear error line (no traceback, not wrapped) and exit with ``code``."""
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(int(code))


def refuse(message: str) -> NoReturn:
    """``fail`` with ExitCode.REFUSED: a bad input, path, config, device or model, before any work."""
    fail(message, ExitCode.REFUSED)


def services() -> Services:
    """The service endpoints from this process's environment (``pipelines.config.ENVIRONMENT``)."""
    return services_from_env(os.environ)


def fetch_model_or_exit(model: str, download_dir: Path) -> Path:
    """The local path of ``--model`` (``pipelines.registry.sources.fetch_model``: a models:/ or runs:/ URI is
    downloaded, the version a models:/ URI resolved to is said first), or exit: 4 for a model that is not
    there, 1 for a registry that may answer on a retry."""
    from cyclegan_core.inference.model_source import parse_model_source
    from cyclegan_core.inference.pretrained import GeneratorLoadError
    from pipelines.registry.sources import fetch_model
    from pipelines.tracking.session import RegistryError

    def said(version: ModelVersionRef) -> None:
        typer.echo(f"{model} resolved to version {version.version} of {version.name} (run {version.run_id}; "
                   f"aliases: {', '.join(version.aliases) or 'none'})", err=True)

    try:
        source = parse_model_source(model)
        return fetch_model(source, download_dir, tracking_uri=services().tracking_uri, on_version=said).path
    except GeneratorLoadError as exc:
        refuse(str(exc))
    except RegistryError as exc:
        fail(str(exc), ExitCode.FAILED if exc.transient else ExitCode.REFUSED)


def print_json(payload: Any) -> None:
    """The machine-readable summary: always the last line on stdout."""
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="debug logging; tracebacks of unexpected errors")
    ] = False,
) -> None:
    ctx.meta[_VERBOSE] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        # Per-request lines of the embedded S3 server and of Prefect's API client drown the progress.
        for noisy in ("werkzeug", "httpx", "botocore", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def config_from_cli(config: Path, assignments: list[str] | None) -> PipelineConfig:
    """Load a PipelineConfig YAML with ``--set key=value`` overrides, or exit with a clear error."""
    overrides = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set expects KEY=VALUE, got {item!r}", ExitCode.USAGE)
        overrides[key] = yaml_value(value)
    try:
        return load_pipeline_config(config, overrides)
    except ValueError as exc:
        refuse(str(exc))


def resolved_from_cli(config: Path, assignments: list[str] | None) -> ResolvedConfig:
    """``config_from_cli`` resolved against this process's environment."""
    return resolve(config_from_cli(config, assignments))


def yaml_value(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, null, strings)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        fail(f"--set value {text!r} is not valid YAML: {' '.join(str(exc).split())}", ExitCode.USAGE)


