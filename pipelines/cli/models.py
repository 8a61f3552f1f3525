"""``cyclegan register | promote | gate | translate``: the MLflow registry and using a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.app import ExitCode, app, fail, print_json, refuse, resolved_from_cli, services


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
    from pipelines.clients.s3 import S3Error
    from pipelines.evaluate import evaluate_model
    from pipelines.ingest import IngestError, ingest_dataset
    from pipelines.registry import RegistryError, download_model
    from pipelines.registry.hand_registered import (
        checkpoint_train_record,
        gate_registered,
        registered_checkpoint,
    )
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
        refuse(f"{name} version {version} ({model.name}) was trained on dataset version {model.tags['dataset_version']}, "
               f"{resolved.dataset_uri} is now version {dataset.version}: its evaluation would not compare with the "
               "other versions'; promote it by hand (`cyclegan promote`) if you want it anyway")
    out_dir = resolved.output_dir / model.tags.get("ray_run_name", name) / f"gate-{model.name}"
    try:
        generators = download_model(f"models:/{model.model_id}", out_dir / "model", tracking_uri=tracking_uri)
        train = checkpoint_train_record(model, generators)
        report = evaluate_model(generators, dataset, resolved, out_dir / "eval")
        ref = gate_registered(client, resolved, model_version, model, train, report)
    except RegistryError as exc:
        fail(str(exc))
    state = "promoted to champion" if ref.promoted else "champion unchanged"
    typer.echo(f"{ref.uri} ({model.name}, aliases {', '.join(ref.aliases) or 'none'}): {state}: {ref.reason}")
    if json_out:
        print_json(ref.model_dump(mode="json"))


# --- translate (cyclegan_core.translate) ---------------------------------------------------------
@app.command()
def translate(
    input_path: Annotated[str, typer.Argument(
        metavar="INPUT", help="an image file, a folder of images, or s3://bucket/prefix (batch job on Ray)",
    )],
    output_path: Annotated[str, typer.Argument(
        metavar="OUTPUT", help="output folder, or for one file an image file name (.png, .jpg ...: that format); "
        "s3://bucket/prefix or a folder for an s3:// INPUT",
    )],
    model: Annotated[str, typer.Option(
        "--model", help="exported model folder, generator folder, official .pth, or models:/NAME@ALIAS, runs:/ID/PATH",
    )],
    direction: Annotated[str, typer.Option(help="AtoB or BtoA (picks G_AB or G_BA of a model folder)")] = "AtoB",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available)")] = None,
    backend: Annotated[str, typer.Option(
        help="auto (the fastest path measured on this machine within 40 dB of fp32: torch or OpenVINO), torch, "
        "or openvino (CPU)",
    )] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (measured; bf16 on CUDA), fp32 (--backend torch --precision fp32: the official computation), "
        "bf16, fp16 (torch), int8 (OpenVINO + NNCF, calibrated on --calibration or the first inputs)",
    )] = "auto",
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="int8: a folder of images of the model's input domain to calibrate on (default: "
        "the first 8 readable inputs)",
    )] = None,
    max_skipped: Annotated[int, typer.Option(
        "--max-skipped", min=0, help="unreadable inputs tolerated: more exit 3 (partial)",
    )] = 0,
    allow_skipped: Annotated[bool, typer.Option("--allow-skipped", help="exit 0 however many inputs are skipped")] = False,
    memory_budget: Annotated[str | None, typer.Option(
        "--memory-budget", help="most memory translating may hold, e.g. 2GiB (default: what the process holds "
        "+ half the available memory); an image over it is translated by tiles",
    )] = None,
    actors: Annotated[int | None, typer.Option(
        "--actors", min=1, help="s3:// batch job: Ray actors (default: one per GPU, else one per CPU)",
    )] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the TranslateSummary as JSON (last line)")] = False,
) -> None:
    """Translate an image or a folder of images (flat) with a trained generator (a folder: PNGs).

    With an s3:// INPUT or OUTPUT: the batch job of the translate-cyclegan flow on Ray (README "Batch
    translation"): recursive, incremental, outputs keyed by the model version.

    Exits 3 when inputs were skipped as unreadable (beyond --max-skipped), 4 on a bad path, device or model.
    """
    from cyclegan_core.atomic import scratch_folder
    from cyclegan_core.backends import BACKENDS, PRECISIONS, check_choice
    from cyclegan_core.memory import parse_bytes
    from cyclegan_core.pretrained import DIRECTIONS, GeneratorLoadError
    from cyclegan_core.translate import check_device, plan_translation, translate_path
    from pipelines.config import cache_dir_from_env

    if direction not in DIRECTIONS:
        fail(f"--direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}", ExitCode.USAGE)
    if backend not in BACKENDS:
        fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}", ExitCode.USAGE)
    if precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", ExitCode.USAGE)
    try:
        check_choice(backend, precision)
    except ValueError as exc:
        fail(f"--backend {backend} --precision {precision}: {exc}", ExitCode.USAGE)
    if calibration is not None and precision != "int8":
        fail("--calibration is for --precision int8", ExitCode.USAGE)
    cache_dir = cache_dir_from_env(os.environ)  # read once, here at the entry
    if input_path.startswith("s3://") or output_path.startswith("s3://"):
        from pipelines.batch.cli import translate_prefix

        if precision == "int8":
            fail("--precision int8 translates local files (its calibration images are the job's first inputs); "
                 "the s3:// batch job runs auto, fp32 or bf16", ExitCode.USAGE)
        try:
            budget = None if memory_budget is None else parse_bytes(memory_budget)
        except ValueError as exc:
            refuse(str(exc))
        return translate_prefix(input_path, output_path, model=model, direction=direction, batch_size=batch_size,
                                device=device, actors=actors, memory_budget=budget, backend=backend,
                                precision=precision, max_skipped=None if allow_skipped else max_skipped,
                                json_out=json_out)
    input_path, output_path = Path(input_path), Path(output_path)  # type: ignore[assignment]
    try:  # the cheap checks before any download or model load
        plan_translation(input_path, output_path)
        resolved_device = check_device(device)
        budget = None if memory_budget is None else parse_bytes(memory_budget)
        if calibration is not None and not calibration.is_dir():
            raise FileNotFoundError(f"--calibration {calibration} is not a folder of images")
    except (OSError, ValueError) as exc:
        refuse(str(exc))
    if resolved_device.type != "cpu" and (backend == "openvino" or precision == "int8"):
        refuse(f"--backend openvino (and int8) runs on the CPU; --device {resolved_device} needs --backend torch")
    with scratch_folder("translate", name="model") as download_dir:  # a killed run's is swept by the next
        model_path = fetch_model(model, download_dir)
        try:
            summary = translate_path(model_path, input_path, output_path, direction=direction, batch_size=batch_size,
                                     device=resolved_device, backend=backend, precision=precision,
                                     memory_budget=budget, cache_dir=cache_dir, calibration=calibration)
        except (GeneratorLoadError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
            refuse(str(exc))
        except OSError as exc:
            fail(f"cannot write the translations: {exc}")
    where = summary.outputs[0] if input_path.is_file() and summary.outputs else output_path
    typer.echo(f"translated with {summary.backend}", err=True)
    typer.echo(f"translated {summary.translated} image(s) into {where} in {summary.seconds:.1f}s"
               + (f"; skipped {len(summary.skipped)}:" if summary.skipped else ""))
    for skipped in summary.skipped:
        typer.echo(f"  {skipped.path}: {skipped.reason}")
    if json_out:
        print_json(summary.model_dump(mode="json"))
    if not allow_skipped and len(summary.skipped) > max_skipped:
        fail(f"skipped {len(summary.skipped)} unreadable input(s) (more than --max-skipped {max_skipped}); "
             f"{summary.translated} translated; --allow-skipped accepts skips", ExitCode.PARTIAL)


def fetch_model(model: str, download_dir: Path) -> Path:
    """The local path of ``--model``: a models:/ or runs:/ URI is downloaded (the only use of MLflow here)."""
    if not model.startswith(("models:/", "runs:/")):
        return Path(model)
    tracking_uri = services().tracking_uri
    require_store(tracking_uri, f"--model {model}")
    from pipelines.registry import RegistryError, download_model
    from pipelines.registry.operations import resolve_version

    try:
        version = resolve_version(model, tracking_uri=tracking_uri)
        if version is not None:  # download exactly the version reported, even if the alias moves meanwhile
            typer.echo(f"{model} resolved to version {version.version} of {version.name} (run {version.run_id}; "
                       f"aliases: {', '.join(version.aliases) or 'none'})", err=True)
        return download_model(version.uri if version else model, download_dir / "model", tracking_uri=tracking_uri)
    except RegistryError as exc:
        fail(str(exc), ExitCode.FAILED if exc.transient else ExitCode.REFUSED)


def require_store(tracking_uri: str, what: str) -> None:
    """Refuse to read from a local MLflow store that does not exist (MLflow would create it, e.g. an empty
    ``mlruns.db`` in the working folder, and then find nothing in it)."""
    missing = missing_local_store(tracking_uri)
    if missing is not None:
        refuse(f"{what}: the MLflow store {tracking_uri} does not exist ({missing}); set "
               "MLFLOW_TRACKING_URI to the tracking server or store that holds the model")


def missing_local_store(tracking_uri: str) -> Path | None:
    """The file or folder of a local MLflow store (sqlite:///..., file:..., a path) when it does not exist."""
    from urllib.parse import urlparse

    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        database = tracking_uri[len("sqlite:///"):].partition("?")[0] if tracking_uri.startswith("sqlite:///") else ""
        location = Path(database) if database and database != ":memory:" else None
    elif parsed.scheme in ("", "file"):
        location = Path(parsed.path if parsed.scheme else tracking_uri)
    else:
        return None
    return location if location is not None and not location.exists() else None
