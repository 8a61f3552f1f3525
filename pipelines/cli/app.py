"""The ``cyclegan`` Typer app and what its commands share: logging set-up, errors without tracebacks,
the JSON summary line, and the entry-point resolution of config and services (the CLI, like the flow,
is an entry point: the only places that read the environment)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig, ResolvedConfig, Services

app = typer.Typer(
    name="cyclegan",
    help="CycleGAN image-to-image translation: synthesise, ingest, train, evaluate, register, translate.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a clear error (no traceback) and exit non-zero."""
    console.print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def services() -> Services:
    """The service endpoints from this process's environment (``pipelines.config.ENVIRONMENT``)."""
    from pipelines.config import services_from_env

    return services_from_env(os.environ)


def print_json(payload: Any) -> None:
    """The machine-readable summary: always the last line on stdout."""
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
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
    from pipelines.config import load_pipeline_config

    overrides = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml_value(value)
    try:
        return load_pipeline_config(config, overrides)
    except ValueError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def resolved_from_cli(config: Path, assignments: list[str] | None) -> ResolvedConfig:
    """``config_from_cli`` resolved against this process's environment."""
    from pipelines.config import resolve

    return resolve(config_from_cli(config, assignments))


def yaml_value(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, null, strings)."""
    import yaml

    return yaml.safe_load(text)


