"""``cyclegan register | promote | translate``: the MLflow registry and using a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.app import app, fail, print_json, services


# --- register, promote (pipelines.registry) ------------------------------------------------------
@app.command()
def register(
    train_result: Annotated[Path, typer.Option("--train-result", help="TrainResult JSON (from `cyclegan train`)")],
    eval_report: Annotated[Path, typer.Option("--eval-report", help="EvalReport JSON (from `cyclegan evaluate`)")],
    config: Annotated[Path, typer.Option("--config", help="pipeline config YAML")],
    json_out: Annotated[bool, typer.Option("--json", help="print the ModelVersionRef as JSON (last line)")] = False,
) -> None:
    """Log a trained, evaluated model to MLflow, register it (alias challenger) and apply the gate."""
    from pydantic import ValidationError

    from pipelines.config import load_pipeline_config, resolve
    from pipelines.records import EvalReport, TrainResult
    from pipelines.registry import RegistryError, register_model

    records: list[Any] = []
    for path, record_type in ((train_result, TrainResult), (eval_report, EvalReport)):
        try:
            records.append(record_type.model_validate_json(path.read_text()))
        except (OSError, ValidationError) as exc:
            fail(f"cannot read {record_type.__name__} from {path}: {exc}")
    try:
        pipeline_config = resolve(load_pipeline_config(config))
        ref = register_model(pipeline_config, records[0], records[1])
    except (ValueError, RegistryError) as exc:
        fail(str(exc))
    state = "promoted to champion" if ref.promoted else "champion unchanged"
    typer.echo(f"{ref.uri} (run {ref.run_id}, aliases {', '.join(ref.aliases) or 'none'}): {state}: "
               f"{ref.reason}\nMLflow: {pipeline_config.services.tracking_uri}")
    if json_out:
        print_json(ref.model_dump(mode="json"))


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="model version number")],
    alias: Annotated[str, typer.Option(help="alias to move")] = "champion",
    json_out: Annotated[bool, typer.Option("--json", help="print the ModelVersionRef as JSON (last line)")] = False,
) -> None:
    """Point an alias (default champion) of a registered model at a version, as a person would in the UI."""
    from pipelines.registry import RegistryError
    from pipelines.registry import promote as promote_version

    try:
        ref = promote_version(name, version, alias, tracking_uri=services().tracking_uri)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{ref.uri}: {ref.reason}")
    if json_out:
        print_json(ref.model_dump(mode="json"))


# --- translate (cyclegan_core.translate) ---------------------------------------------------------
@app.command()
def translate(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="an image file or a folder of images")],
    output_path: Annotated[Path, typer.Argument(metavar="OUTPUT", help="output folder (or a .png file name)")],
    model: Annotated[str, typer.Option(
        "--model", help="exported model folder, generator folder, official .pth, or models:/NAME@ALIAS, runs:/ID/PATH",
    )],
    direction: Annotated[str, typer.Option(help="AtoB or BtoA (picks G_AB or G_BA of a model folder)")] = "AtoB",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the TranslateSummary as JSON (last line)")] = False,
) -> None:
    """Translate an image or a folder of images (flat) with a trained generator; writes PNGs."""
    import tempfile

    from cyclegan_core.pretrained import DIRECTIONS, GeneratorLoadError
    from cyclegan_core.translate import translate_path

    tracking_uri = services().tracking_uri
    if direction not in DIRECTIONS:
        fail(f"--direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    with tempfile.TemporaryDirectory(prefix="cyclegan-model-") as download_dir:
        model_path = Path(model)
        if model.startswith(("models:/", "runs:/")):
            from pipelines.registry import RegistryError, download_model

            try:
                model_path = download_model(model, Path(download_dir) / "model", tracking_uri=tracking_uri)
            except RegistryError as exc:
                fail(str(exc))
        try:
            summary = translate_path(model_path, input_path, output_path, direction=direction,
                                     batch_size=batch_size, device=device)
        except (GeneratorLoadError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
            fail(str(exc))
    typer.echo(f"translated {summary.translated} image(s) into {output_path} in {summary.seconds:.1f}s"
               + (f"; skipped {len(summary.skipped)}:" if summary.skipped else ""))
    for skipped in summary.skipped:
        typer.echo(f"  {skipped.path}: {skipped.reason}")
    if json_out:
        print_json(summary.model_dump(mode="json"))
