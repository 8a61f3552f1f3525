"""``cyclegan translate s3://in/ s3://out/ --model models:/name@champion``: the batch job from the command line.

The same job as the ``translate-cyclegan`` flow (``translate_batch``), with the exit codes of README
"Exit codes": 4 for a bad URI, option or model (before any work), 3 when more inputs were quarantined
than tolerated, 1 when inputs failed for another reason (S3 errors: the next run retries them).
"""

from __future__ import annotations

import os

import typer

from pipelines.batch.planning import ModelIdentity
from pipelines.cli.app import ExitCode, fail, print_json, refuse


def translate_prefix(input_uri: str, output_uri: str, *, model: str, direction: str, batch_size: int,
                     device: str | None, actors: int | None, memory_budget: int | None, max_skipped: int | None,
                     json_out: bool, backend: str = "auto", precision: str = "auto") -> None:
    """Run the batch job and report it as ``cyclegan translate`` does (one line, the quarantine, --json)."""
    from pipelines.batch import batch_settings, translate_batch
    from pipelines.cli.models import missing_local_store
    from pipelines.clients.s3 import S3Error
    from pipelines.registry import RegistryError

    use_gpu = None if device is None else device.startswith("cuda")
    try:
        settings = batch_settings(input_uri, output_uri, model, env=os.environ, direction=direction,
                                  batch_size=batch_size, actors=actors, use_gpu=use_gpu, memory_budget=memory_budget,
                                  max_quarantined=max_skipped, backend=backend, precision=precision)
    except ValueError as exc:
        refuse(str(exc))
    missing = missing_local_store(settings.services.tracking_uri)
    if model.startswith(("models:/", "runs:/")) and missing is not None:
        refuse(f"--model {model}: the MLflow store {settings.services.tracking_uri} does not exist ({missing}); "
               "set MLFLOW_TRACKING_URI to the tracking server or store that holds the model")

    def on_model(identity: ModelIdentity) -> None:
        typer.echo(f"{identity.uri} resolved to {identity.resolved_uri}", err=True)

    try:
        result = translate_batch(settings, on_model=on_model)
    except RegistryError as exc:
        fail(str(exc), ExitCode.FAILED if exc.transient else ExitCode.REFUSED)
    except (FileNotFoundError, ValueError) as exc:
        refuse(str(exc))
    except S3Error as exc:
        fail(str(exc))
    typer.echo(f"translated {result.translated} image(s) into {result.output_prefix} in {result.seconds:.1f}s; "
               f"{result.skipped} unchanged since an earlier run; quarantined {result.quarantined}"
               + (":" if result.quarantine else ""))
    for entry in result.quarantine:
        typer.echo(f"  {entry.source}: {entry.reason}")
    if json_out:
        print_json(result.model_dump(mode="json"))
    if result.errors:
        fail(f"{len(result.errors)} input(s) failed (a re-run retries them): "
             + "; ".join(f"{e.source}: {e.reason}" for e in result.errors[:3]))
    if not result.within_tolerance:
        fail(f"quarantined {result.quarantined} unreadable input(s) (more than --max-skipped {max_skipped}); "
             f"{result.translated} translated; --allow-skipped accepts them", ExitCode.PARTIAL)
