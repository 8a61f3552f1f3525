"""The ``cyclegan`` command line: one sub-command per pipeline stage plus the library's tools.

Each command is a thin wrapper: it parses options, resolves the config and services once (the CLI is an
entry point: the only place besides the flow that reads the environment), calls a plain function of
``cyclegan_core`` or ``pipelines`` and prints a summary (``--json``: the last line, machine-readable).
Heavy imports happen inside commands so ``cyclegan --help`` stays fast.
"""

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


# --- data: synth (cyclegan_core.synthetic) -------------------------------------------------------
# (section: data)
@app.command()
def synth(
    dest: Annotated[Path, typer.Argument(help="folder to create (trainA/ trainB/ testA/ testB/ testA_ref/)")],
    size: Annotated[int, typer.Option("--size", min=8, help="image side in pixels")] = 64,
    train: Annotated[int, typer.Option("--train", min=1, help="training images per domain")] = 400,
    test: Annotated[int, typer.Option("--test", min=1, help="test images per domain")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same bytes)")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty DEST")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON (last line)")] = False,
) -> None:
    """Write the synthetic domain pair (warm scenes -> complementary hues, see cyclegan_core.synthetic)."""
    from cyclegan_core.synthetic import identity_psnr, make_synthetic_dataset

    try:
        root = make_synthetic_dataset(dest, size=size, n_train=train, n_test=test, seed=seed,
                                      overwrite=overwrite)
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    summary = {"root": str(root.resolve()), "size": size, "train": train, "test": test, "seed": seed,
               "identity_psnr_db": round(identity_psnr(root), 3)}
    typer.echo(f"wrote {root}: {train} train / {test} test images per domain at {size}x{size}; "
               f"identity baseline PSNR on testA_ref {summary['identity_psnr_db']:.2f} dB")
    if json_out:
        print_json(summary)


# --- S3: upload, ingest (pipelines.ingest) -------------------------------------------------------
# (section: ingest)
@app.command()
def upload(
    local_dir: Annotated[Path, typer.Argument(help="folder to upload, e.g. from `cyclegan synth`")],
    uri: Annotated[str, typer.Argument(help="destination s3://bucket/prefix")],
    workers: Annotated[int, typer.Option("--workers", min=1, help="parallel uploads")] = 16,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON (last line)")] = False,
) -> None:
    """Upload every file under LOCAL_DIR to s3://bucket/prefix, skipping objects that are unchanged."""
    from pipelines.ingest import IngestError, upload_folder
    from pipelines.s3 import S3Error, make_s3_client

    try:
        endpoints = services()
        client = make_s3_client(endpoint_url=endpoint_url or endpoints.s3_endpoint_url,
                                region=endpoints.s3_region, max_pool_connections=workers)
        summary = upload_folder(local_dir, uri, max_workers=workers, client=client)
    except (IngestError, S3Error, ValueError, OSError) as exc:
        fail(str(exc))
    line = (f"uploaded {summary.local_dir} -> {summary.uri}: {summary.uploaded} sent, "
            f"{summary.skipped_unchanged} unchanged, {summary.bytes_uploaded / 1e6:.1f} MB in {summary.seconds:.1f}s")
    if json_out:
        console.print(line, markup=False, soft_wrap=True)
        print_json(summary.model_dump(mode="json"))
    else:
        typer.echo(line)


@app.command()
def ingest(
    uri: Annotated[str, typer.Argument(help="dataset s3://bucket/prefix holding trainA/ trainB/ testA/ testB/")],
    cache: Annotated[Path, typer.Option("--cache", help="local cache folder")] = Path(".cache/datasets"),
    load_size: Annotated[int, typer.Option("--load-size", min=1, help="side of the pre-decoded cache")] = 286,
    workers: Annotated[int, typer.Option("--workers", min=1, help="parallel downloads")] = 16,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the summary as JSON (last line; its 'dataset' is a DatasetRef)")
    ] = False,
) -> None:
    """Download, validate and cache an S3 dataset prefix incrementally; print its version and local root."""
    from pipelines.ingest import IngestError, ingest_prefix
    from pipelines.s3 import S3Error, make_s3_client

    try:
        endpoints = services()
        client = make_s3_client(endpoint_url=endpoint_url or endpoints.s3_endpoint_url,
                                region=endpoints.s3_region, max_pool_connections=workers)
        summary = ingest_prefix(uri, cache, load_size=load_size, max_workers=workers, client=client)
    except (IngestError, S3Error, ValueError, OSError) as exc:
        fail(str(exc))
    for key, reason in summary.quarantined:
        console.print(f"quarantined {key}: {reason}", markup=False, soft_wrap=True)
    for key, reason in summary.rejected_keys:
        console.print(f"rejected key {key!r}: {reason}", markup=False, soft_wrap=True)
    if json_out:
        console.print(summary.one_line(), markup=False, soft_wrap=True)
        print_json({**summary.model_dump(mode="json"), "dataset": summary.dataset.model_dump(mode="json")})
    else:
        typer.echo(summary.one_line())


# --- train (pipelines.train) ---------------------------------------------------------------------
# (section: train)
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
    from pydantic import ValidationError

    from pipelines.records import DatasetRef
    from pipelines.train import TrainingError, train_on_ray

    pipeline_config = resolved_from_cli(config, set_)
    if dataset is not None:
        try:
            payload = json.loads(dataset.read_text())
            # `cyclegan ingest --json` prints the ingest summary, whose "dataset" is the DatasetRef
            dataset_ref = DatasetRef.model_validate(payload.get("dataset", payload))
        except (OSError, ValueError, AttributeError, ValidationError) as exc:
            fail(f"cannot read DatasetRef from {dataset}: {exc}")
    else:
        from pipelines.ingest import IngestError, ingest_dataset
        from pipelines.s3 import S3Error

        try:
            dataset_ref = ingest_dataset(pipeline_config).dataset
        except (IngestError, S3Error) as exc:
            fail(f"cannot ingest {pipeline_config.dataset_uri}: {exc}")
    try:
        result = train_on_ray(pipeline_config, dataset_ref)
    except (ValueError, TrainingError) as exc:
        fail(str(exc))
    final = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k.startswith("loss_"))
    typer.echo(f"run {result.run_name}: {result.epochs} epochs, {result.steps} steps ({final})\n"
               f"checkpoint: {result.checkpoint_uri}\ngenerators: {result.generators_dir}")
    if json_out:
        print_json(result.model_dump(mode="json"))


# --- evaluate (pipelines.evaluate) ---------------------------------------------------------------
# (section: evaluate)
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
    from cyclegan_core.pretrained import GeneratorLoadError
    from pipelines.config import EvalSettings, RegistrySettings, load_pipeline_config
    from pipelines.evaluate import evaluate_generators

    endpoints = services()
    settings, registry = EvalSettings(), RegistrySettings()
    if config is not None:
        try:
            pipeline_config = load_pipeline_config(config)
        except ValueError as exc:
            fail(str(exc))
        settings, registry = pipeline_config.eval, pipeline_config.registry
    if max_images is not None:
        settings = settings.model_copy(update={"max_images": max_images})
    weights = inception_weights or settings.inception_weights or endpoints.inception_weights
    try:
        report = evaluate_generators(model, data, out, settings=settings, registry=registry,
                                     inception_weights=weights, s3_endpoint_url=endpoints.s3_endpoint_url,
                                     s3_region=endpoints.s3_region)
    except (ValueError, GeneratorLoadError) as exc:
        fail(str(exc))
    lines = [f"{name}: {value:.4f}" for name, value in sorted(report.metrics.items())]
    lines += [f"{name}: SKIPPED ({reason})" for name, reason in sorted(report.skipped.items())]
    typer.echo("\n".join(lines) + f"\nprimary {report.primary_metric} = {report.primary_value:.4f}\n"
               f"report: {report.artifacts['eval_report']}")
    if json_out:
        print_json(report.model_dump(mode="json"))


# --- register, promote (pipelines.registry) ------------------------------------------------------
# (section: registry)
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
# (section: translate)
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

    from cyclegan_core.pretrained import GeneratorLoadError
    from cyclegan_core.translate import translate_path

    tracking_uri = services().tracking_uri
    if direction not in ("AtoB", "BtoA"):
        fail(f"--direction must be AtoB or BtoA, got {direction!r}")
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


# --- demo, run (pipelines.flows) -----------------------------------------------------------------
# (section: flows)
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the dataset, cache, checkpoints and outputs")] = Path(
        "demo-output"
    ),
    epochs: Annotated[int | None, typer.Option(help="epochs at the initial learning rate")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON (last line)")] = False,
) -> None:
    """Run the whole pipeline on embedded services: synthetic data -> local S3 -> Ray -> MLflow."""
    from pipelines.demo import DemoSettings, demo_summary, run_demo

    settings = DemoSettings(out_dir=out, **({"epochs": epochs} if epochs is not None else {}))
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
    from pipelines.config import resolve
    from pipelines.flows import summary_markdown, train_cyclegan

    pipeline_config = config_from_cli(config, set_)
    outcome = train_cyclegan(pipeline_config)
    typer.echo(summary_markdown(resolve(pipeline_config), outcome))
    if json_out:
        print_json(outcome.model_dump(mode="json"))


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


if __name__ == "__main__":
    app()
