"""``cyclegan train | evaluate``: the training and evaluation stages on their own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from pipelines.cli.app import app, fail, print_json, refuse, resolved_from_cli, services
from pipelines.config import EvalSettings, RegistrySettings, load_pipeline_config
from pipelines.records import DatasetRef


# --- train (pipelines.train) ---------------------------------------------------------------------
@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="pipeline config YAML")],
    dataset: Annotated[
        Path | None,
        typer.Option("--dataset", help="DatasetRef JSON (from `cyclegan ingest --json`); default: ingest "
                                       "the config's dataset_uri into its cache_dir first"),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a field: --set scaling.num_workers=2 (repeatable)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the TrainResult as JSON (last line)")] = False,
) -> None:
    """Train on Ray (local, or the cluster RAY_ADDRESS names); re-running the same run.run_name resumes it."""
    from pipelines.train import TrainingError, train_on_ray

    pipeline_config = resolved_from_cli(config, set_)
    if dataset is not None:
        try:
            payload = json.loads(dataset.read_text())
            # `cyclegan ingest --json` prints the ingest summary, whose "dataset" is the DatasetRef
            dataset_ref = DatasetRef.model_validate(payload.get("dataset", payload))
        except (OSError, ValueError, AttributeError, ValidationError) as exc:
            refuse(f"cannot read DatasetRef from {dataset}: {exc}")
    else:
        from pipelines.clients.s3 import S3Error
        from pipelines.ingest import IngestError, ingest_dataset

        try:
            dataset_ref = ingest_dataset(pipeline_config).dataset
        except (IngestError, S3Error) as exc:
            fail(f"cannot ingest {pipeline_config.dataset_uri}: {exc}")
    try:
        result = train_on_ray(pipeline_config, dataset_ref)
    except ValueError as exc:  # the config or the run folder does not fit (checked before training starts)
        refuse(str(exc))
    except TrainingError as exc:
        fail(str(exc))
    final = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k.startswith("loss_"))
    typer.echo(f"run {result.run_name}: {result.epochs} epochs, {result.steps} steps ({final})\n"
               f"checkpoint: {result.checkpoint_uri}\ngenerators: {result.generators_dir}")
    if json_out:
        print_json(result.model_dump(mode="json"))


# --- evaluate (pipelines.evaluate) ---------------------------------------------------------------
@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="exported model folder holding G_AB/ and G_BA/")],
    data: Annotated[Path, typer.Option("--data", help="dataset root with testA/ testB/ (and testA_ref/)")],
    out: Annotated[Path, typer.Option("--out", help="folder for the sample grids and eval_report.json")],
    config: Annotated[
        Path | None, typer.Option("--config", help="pipeline config YAML (its eval and registry sections)")
    ] = None,
    inception_weights: Annotated[
        str | None,
        typer.Option("--inception-weights", help="Inception-v3 FID weights: file, s3:// URI or 'torchvision' "
                                                 "(default: eval.inception_weights, CYCLEGAN_INCEPTION_WEIGHTS)"),
    ] = None,
    max_images: Annotated[int | None, typer.Option("--max-images", min=1, help="test images per domain")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the EvalReport as JSON (last line)")] = False,
) -> None:
    """Score exported generators on a local dataset's test splits: FID/KID, PSNR/SSIM/L1, cycle error."""
    from cyclegan_core.evaluation.scoring import split_paths
    from cyclegan_core.inference.pretrained import GeneratorLoadError
    from pipelines.evaluate import evaluate_generators

    endpoints = services()
    settings, registry = EvalSettings(), RegistrySettings()
    if config is not None:
        try:
            pipeline_config = load_pipeline_config(config)
        except ValueError as exc:
            refuse(str(exc))
        settings, registry = pipeline_config.eval, pipeline_config.registry
    if max_images is not None:
        settings = settings.model_copy(update={"max_images": max_images})
    weights = inception_weights or settings.inception_weights or endpoints.inception_weights
    if out.exists() and not out.is_dir():
        refuse(f"--out {out} is a file; evaluate writes a folder (grids, eval_report.json)")
    try:
        split_paths(data)  # the test splits exist before the model and the FID weights are loaded
        report = evaluate_generators(model, data, out, settings=settings, registry=registry,
                                     inception_weights=weights, s3_endpoint_url=endpoints.s3_endpoint_url,
                                     s3_region=endpoints.s3_region)
    except (ValueError, GeneratorLoadError, FileNotFoundError, NotADirectoryError) as exc:
        refuse(str(exc))
    lines = [f"{name}: {value:.4f}" for name, value in sorted(report.metrics.items())]
    lines += [f"{name}: SKIPPED ({reason})" for name, reason in sorted(report.skipped.items())]
    typer.echo("\n".join(lines) + f"\nprimary {report.primary_metric} = {report.primary_value:.4f}\n"
               f"report: {report.artifacts['eval_report']}")
    if json_out:
        print_json(report.model_dump(mode="json"))
