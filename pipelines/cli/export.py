"""``cyclegan export``: write a model in another format (ONNX) for other runtimes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ExitCode, app, fail, fetch_model_or_exit, print_json, refuse

EXPORT_FORMATS = ("onnx",)


@app.command()
def export(
    output_path: Annotated[Path, typer.Argument(metavar="OUT", help="folder to write (replaced once complete)")],
    model: Annotated[str, typer.Option(
        "--model", help="exported model folder, generator folder, official .pth, or models:/NAME@ALIAS, runs:/ID/PATH",
    )],
    export_format: Annotated[str, typer.Option("--format", help="onnx: G_AB.onnx, G_BA.onnx, config.json")] = "onnx",
    opset: Annotated[int | None, typer.Option(min=18, help="ONNX opset, 18 or later (default: the exporter's)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a summary as JSON (last line)")] = False,
) -> None:
    """Export a model's generators as ONNX graphs with dynamic height and width, for other runtimes.

    Each graph is checked with onnxruntime against PyTorch. Exits 4 on a bad model or output path.
    """
    from cyclegan_core.atomic import scratch_folder
    from cyclegan_core.inference.model_source import is_onnx_export
    from cyclegan_core.inference.onnx_export import (
        CONFIG_FILE,
        OnnxExportError,
        export_onnx,
        read_onnx_export,
    )
    from cyclegan_core.inference.pretrained import GeneratorLoadError
    from cyclegan_core.inference.translator import Translator

    if export_format not in EXPORT_FORMATS:
        fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}", ExitCode.USAGE)
    if output_path.exists() and not output_path.is_dir():
        refuse(f"output {output_path} exists and is not a folder; an ONNX export is a folder")
    if output_path.is_dir() and any(output_path.iterdir()) and not is_onnx_export(output_path):
        refuse(f"output {output_path} is a folder that is not an ONNX export; refusing to replace it: name a new "
               "folder or one `cyclegan export` wrote")
    started = time.perf_counter()
    with scratch_folder("export", name="model") as download_dir:
        model_path = fetch_model_or_exit(model, download_dir)
        try:
            translator = Translator.from_pretrained(model_path, device="cpu")
        except (GeneratorLoadError, ValueError) as exc:
            refuse(str(exc))
        try:
            export_onnx(translator, output_path, opset=opset)
        except OnnxExportError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write {output_path}: {exc}")
    written = read_onnx_export(output_path)
    files = [entry.file for entry in written.generators.values()] + [CONFIG_FILE]
    seconds = time.perf_counter() - started
    typer.echo(f"exported {', '.join(files[:-1])} to {output_path} (opset {written.opset}, dynamic height and "
               f"width, padded to multiples of {written.size_multiple}) in {seconds:.1f}s")
    if json_out:
        print_json({"output": str(output_path), "format": export_format, "files": files, "opset": written.opset,
                    "size_multiple": written.size_multiple, "seconds": round(seconds, 3)})

