"""``cyclegan demo | run``: the whole train-cyclegan flow, on embedded services or a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ExitCode, app, config_from_cli, fail, print_json, services
from pipelines.config import resolve
from pipelines.summary import summary_markdown


# --- demo, run (pipelines.flows.train) -----------------------------------------------------------------
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the dataset, cache, checkpoints and outputs")] = Path(
        "demo-output"
    ),
    epochs: Annotated[int | None, typer.Option(help="epochs at the initial learning rate")] = None,
    precision: Annotated[str, typer.Option(
        help="train.precision: auto (the faster of fp32 and bf16 measured on this CPU), fp32 (official), bf16",
    )] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON (last line)")] = False,
) -> None:
    """Run the whole pipeline on embedded services: synthetic data -> local S3 -> Ray -> MLflow."""
    from pipelines.flows.demo import DemoSettings, demo_summary, run_demo

    if precision not in ("auto", "fp32", "bf16"):
        fail(f"--precision must be one of auto, fp32, bf16, got {precision!r}", ExitCode.USAGE)
    settings = DemoSettings(out_dir=out, precision=precision, **({"epochs": epochs} if epochs is not None else {}))
    outcome = run_demo(settings)
    typer.echo(demo_summary(outcome, tracking_uri=services().tracking_uri))
    if json_out:
        print_json(outcome.model_dump(mode="json"))


@app.command("run")
def run_flow(
    config: Annotated[Path, typer.Argument(help="pipeline config YAML (see configs/example.yaml)")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a field: --set train.lr=0.0001 (repeatable)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON (last line)")] = False,
) -> None:
    """Run the train-cyclegan flow once, here, with the given config (Prefect's API or ephemeral)."""
    from pipelines.flows.train import train_cyclegan

    pipeline_config = config_from_cli(config, set_)
    outcome = train_cyclegan(pipeline_config)
    typer.echo(summary_markdown(resolve(pipeline_config), outcome))
    if json_out:
        print_json(outcome.model_dump(mode="json"))
