"""``cyclegan register | promote | gate``: the MLflow model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.app import ExitCode, app, fail, print_json, refuse, resolved_from_cli, services


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
            refuse(f"cannot read {record_type.__name__} from {path}: {exc}")
    try:
        pipeline_config = resolve(load_pipeline_config(config))
    except ValueError as exc:
        refuse(str(exc))
    try:
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

    tracking_uri = services().tracking_uri
    require_store(tracking_uri, f"cannot promote {name} version {version}")
    try:
        ref = promote_version(name, version, alias, tracking_uri=tracking_uri)
    except RegistryError as exc:  # a version or model that does not exist, or a store that refuses: 4
        fail(str(exc), ExitCode.FAILED if exc.transient else ExitCode.REFUSED)
    typer.echo(f"{ref.uri}: {ref.reason}")
    if json_out:
        print_json(ref.model_dump(mode="json"))


@app.command()
def gate(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="a version registered by hand from a checkpoint's LoggedModel")],
    config: Annotated[Path, typer.Option("--config", help="the pipeline config it was trained with (YAML)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field (repeatable)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the ModelVersionRef as JSON (last line)")] = False,
) -> None:
    """Give a version registered by hand in the MLflow UI (a checkpoint's LoggedModel, "Register model")
    the pipeline's evaluation, model card and gate: alias challenger, champion when it wins."""
    from cyclegan_core.inference.model_source import ModelSource
    from pipelines.clients.s3 import S3Error
    from pipelines.evaluate import evaluate_model
    from pipelines.ingest import IngestError, ingest_dataset
    from pipelines.registry import RegistryError
    from pipelines.registry.hand_registered import (
        checkpoint_train_record,
        gate_registered,
        registered_checkpoint,
    )
    from pipelines.registry.sources import fetch_model
    from pipelines.tracking.session import check_reachable, mlflow_client

    resolved = resolved_from_cli(config, set_)
    tracking_uri = resolved.services.tracking_uri
    require_store(tracking_uri, f"cannot gate {name} version {version}")
    try:
        check_reachable(tracking_uri)
        client = mlflow_client(tracking_uri)
        model_version, model = registered_checkpoint(client, name, version)
    except RegistryError as exc:
        fail(str(exc), ExitCode.FAILED if exc.transient else ExitCode.REFUSED)
    try:
        dataset = ingest_dataset(resolved).dataset
    except (IngestError, S3Error) as exc:
        fail(f"cannot ingest {resolved.dataset_uri}: {exc}")
    if dataset.version != model.tags["dataset_version"]:
        refuse(
            f"{name} version {version} ({model.name}) was trained on dataset version {model.tags['dataset_version']}, "
            f"{resolved.dataset_uri} is now version {dataset.version}: its evaluation would not compare with the "
            "other versions'; promote it by hand (`cyclegan promote`) if you want it anyway"
        )
    out_dir = resolved.output_dir / model.tags.get("ray_run_name", name) / f"gate-{model.name}"
    try:
        logged = ModelSource(f"models:/{model.model_id}", "registered")  # a LoggedModel: no version to resolve
        generators = fetch_model(logged, out_dir, tracking_uri=tracking_uri).path
        train = checkpoint_train_record(model, generators)
        report = evaluate_model(generators, dataset, resolved, out_dir / "eval")
        ref = gate_registered(client, resolved, model_version, model, train, report)
    except RegistryError as exc:
        fail(str(exc))
    state = "promoted to champion" if ref.promoted else "champion unchanged"
    typer.echo(f"{ref.uri} ({model.name}, aliases {', '.join(ref.aliases) or 'none'}): {state}: {ref.reason}")
    if json_out:
        print_json(ref.model_dump(mode="json"))


def require_store(tracking_uri: str, what: str) -> None:
    """Refuse to read from a local MLflow store that does not exist (MLflow would create it, e.g. an empty
    ``mlruns.db`` in the working folder, and then find nothing in it)."""
    from pipelines.registry.sources import missing_local_store

    missing = missing_local_store(tracking_uri)
    if missing is not None:
        refuse(f"{what}: the MLflow store {tracking_uri} does not exist ({missing}); set "
               "MLFLOW_TRACKING_URI to the tracking server or store that holds the model")
