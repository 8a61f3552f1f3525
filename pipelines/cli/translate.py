"""``cyclegan translate``: local files with ``cyclegan_core.inference.files``, or an s3:// prefix with the batch job.

The options are one ``TranslateOptions`` record, validated here once; the model is fetched through the one
resolver (``pipelines.registry.sources``). An s3:// INPUT or OUTPUT runs the job of the ``translate-cyclegan``
flow (``translate_batch``) with the exit codes of README "Exit codes": 4 for a bad URI, option or model
(before any work), 3 when more inputs were skipped or quarantined than tolerated, 1 when inputs failed
for another reason (S3 errors: the next run retries them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.app import ExitCode, app, fail, fetch_model_or_exit, print_json, refuse

if TYPE_CHECKING:
    from cyclegan_core.inference.files import TranslateOptions


@app.command()
def translate(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="an image file, a folder of images, or s3://bucket/prefix (batch job on Ray)",
        ),
    ],
    output_path: Annotated[
        str,
        typer.Argument(
            metavar="OUTPUT",
            help="output folder, or for one file an image file name (.png, .jpg ...: that format); "
            "s3://bucket/prefix or a folder for an s3:// INPUT",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="exported model folder, generator folder, official .pth, or models:/NAME@ALIAS, runs:/ID/PATH",
        ),
    ],
    direction: Annotated[str, typer.Option(help="AtoB or BtoA (picks G_AB or G_BA of a model folder)")] = "AtoB",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available)")] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="auto (the fastest path measured on this machine within 40 dB of fp32: torch or OpenVINO), torch, "
            "or openvino (CPU)",
        ),
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="auto (measured; bf16 on CUDA), fp32 (--backend torch --precision fp32: the official computation), "
            "bf16, fp16 (torch), int8 (OpenVINO + NNCF, calibrated on --calibration or the first inputs)",
        ),
    ] = "auto",
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="int8: a folder of images of the model's input domain to calibrate on (default: "
            "the first 8 readable inputs)",
        ),
    ] = None,
    max_skipped: Annotated[
        int,
        typer.Option(
            "--max-skipped",
            min=0,
            help="unreadable inputs tolerated: more exit 3 (partial)",
        ),
    ] = 0,
    allow_skipped: Annotated[
        bool, typer.Option("--allow-skipped", help="exit 0 however many inputs are skipped")
    ] = False,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget",
            help="most memory translating may hold, e.g. 2GiB (default: what the process holds "
            "+ half the available memory); an image over it is translated by tiles",
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            "--actors",
            min=1,
            help="s3:// batch job: Ray actors (default: one per GPU, else one per CPU)",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the TranslateSummary as JSON (last line)")] = False,
) -> None:
    """Translate an image or a folder of images (flat) with a trained generator (a folder: PNGs).

    With an s3:// INPUT or OUTPUT: the batch job of the translate-cyclegan flow on Ray (README "Batch
    translation"): recursive, incremental, outputs keyed by the model version.

    Exits 3 when inputs were skipped as unreadable (beyond --max-skipped), 4 on a bad path, device or model.
    """
    from cyclegan_core.inference.files import TranslateOptionsError, translate_options

    try:
        options = translate_options(direction=direction, batch_size=batch_size, device=device, backend=backend,
                                    precision=precision, memory_budget=memory_budget, calibration=calibration,
                                    max_skipped=None if allow_skipped else max_skipped, actors=actors)
    except TranslateOptionsError as exc:
        if exc.field == "memory_budget":  # a value, not a choice: a bad input (4), as before any work
            refuse(str(exc.detail))
        fail(f"--{exc.field.replace('_', '-')} {exc.detail}" if exc.field.isidentifier() else str(exc), ExitCode.USAGE)
    if input_path.startswith("s3://") or output_path.startswith("s3://"):
        if options.precision == "int8":
            fail("--precision int8 translates local files (its calibration images are the job's first inputs); "
                 "the s3:// batch job runs auto, fp32 or bf16", ExitCode.USAGE)
        return translate_prefix(input_path, output_path, model=model, options=options, json_out=json_out)
    translate_files(Path(input_path), Path(output_path), model=model, options=options, json_out=json_out)


def translate_files(input_path: Path, output_path: Path, *, model: str, options: TranslateOptions,
                    json_out: bool) -> None:
    """Translate local files as ``cyclegan_core.inference.files.translate_path`` does, after the cheap checks."""
    from cyclegan_core.atomic import scratch_folder
    from cyclegan_core.inference.files import check_device, plan_translation, translate_path
    from cyclegan_core.inference.pretrained import GeneratorLoadError
    from pipelines.config import cache_dir_from_env

    cache_dir = cache_dir_from_env(os.environ)  # read once, here at the entry
    try:  # the cheap checks before any download or model load
        plan_translation(input_path, output_path)
        resolved_device = check_device(options.device)
        if options.calibration is not None and not options.calibration.is_dir():
            raise FileNotFoundError(f"--calibration {options.calibration} is not a folder of images")
    except (OSError, ValueError) as exc:
        refuse(str(exc))
    if resolved_device.type != "cpu" and (options.backend == "openvino" or options.precision == "int8"):
        refuse(f"--backend openvino (and int8) runs on the CPU; --device {resolved_device} needs --backend torch")
    with scratch_folder("translate", name="model") as download_dir:  # a killed run's is swept by the next
        model_path = fetch_model_or_exit(model, download_dir)
        try:
            summary = translate_path(model_path, input_path, output_path, options, cache_dir=cache_dir)
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
    if options.max_skipped is not None and len(summary.skipped) > options.max_skipped:
        fail(f"skipped {len(summary.skipped)} unreadable input(s) (more than --max-skipped {options.max_skipped}); "
             f"{summary.translated} translated; --allow-skipped accepts skips", ExitCode.PARTIAL)


def translate_prefix(input_uri: str, output_uri: str, *, model: str, options: TranslateOptions,
                     json_out: bool) -> None:
    """Run the batch job and report it as ``cyclegan translate`` does (one line, the quarantine, --json)."""
    from cyclegan_core.inference.pretrained import GeneratorLoadError
    from pipelines.batch import batch_settings, translate_batch
    from pipelines.batch.planning import ModelIdentity
    from pipelines.clients.s3 import S3Error
    from pipelines.registry import RegistryError

    try:
        settings = batch_settings(input_uri, output_uri, model, env=os.environ, options=options)
    except ValueError as exc:
        refuse(str(exc))

    def on_model(identity: ModelIdentity) -> None:
        typer.echo(f"{identity.uri} resolved to {identity.resolved_uri}", err=True)

    try:
        result = translate_batch(settings, on_model=on_model)
    except RegistryError as exc:
        fail(str(exc), ExitCode.FAILED if exc.transient else ExitCode.REFUSED)
    except (FileNotFoundError, ValueError, GeneratorLoadError) as exc:
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
        fail(f"quarantined {result.quarantined} unreadable input(s) (more than --max-skipped {options.max_skipped}); "
             f"{result.translated} translated; --allow-skipped accepts them", ExitCode.PARTIAL)
