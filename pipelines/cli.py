"""The ``cyclegan`` command line: one sub-command per pipeline stage plus the library's tools.

Each command is a thin wrapper: it parses options, calls a plain function of ``cyclegan_core`` or
``pipelines`` and prints a summary (``--json`` prints it as the last line, machine-readable).
Heavy imports happen inside commands so ``cyclegan --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="cyclegan",
    help="CycleGAN image-to-image translation: synthesise, ingest, train, evaluate, register, translate.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a clear error (no traceback) and exit non-zero."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


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


# --- data: synth (cyclegan_core.synthetic) -------------------------------------------------------
# (section: data)

# --- S3: upload, ingest (pipelines.ingest) -------------------------------------------------------
# (section: ingest)

# --- train (pipelines.train) ---------------------------------------------------------------------
# (section: train)

# --- evaluate (pipelines.evaluate) ---------------------------------------------------------------
# (section: evaluate)

# --- register, promote (pipelines.registry) ------------------------------------------------------
# (section: registry)

# --- translate (cyclegan_core.translate) ---------------------------------------------------------
# (section: translate)

# --- demo, run (pipelines.flows) -----------------------------------------------------------------
# (section: flows)
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the dataset, cache, checkpoints and outputs")] = Path(
        "demo-output"
    ),
    epochs: Annotated[Optional[int], typer.Option(help="epochs at the initial learning rate")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON (last line)")] = False,
) -> None:
    """Run the whole pipeline on embedded services: synthetic data -> local S3 -> Ray -> MLflow."""
    from pipelines.demo import DemoSettings, demo_summary, run_demo

    settings = DemoSettings(out_dir=out, **({"epochs": epochs} if epochs is not None else {}))
    outcome = run_demo(settings)
    typer.echo(demo_summary(outcome))
    if json_out:
        print_json(outcome.model_dump(mode="json"))


@app.command("run")
def run_flow(
    config: Annotated[Path, typer.Argument(help="pipeline config YAML (see configs/example.yaml)")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override a field: --set train.lr=0.0001 (repeatable)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON (last line)")] = False,
) -> None:
    """Run the train-cyclegan flow once, here, with the given config (Prefect's API or ephemeral)."""
    from pipelines.config import load_pipeline_config
    from pipelines.flows import summary_markdown, train_cyclegan

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml_value(value)
    try:
        pipeline_config = load_pipeline_config(config, overrides)
    except ValueError as exc:
        fail(str(exc))
    outcome = train_cyclegan(pipeline_config)
    typer.echo(summary_markdown(pipeline_config, outcome))
    if json_out:
        print_json(outcome.model_dump(mode="json"))


def yaml_value(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, null, strings)."""
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    app()
