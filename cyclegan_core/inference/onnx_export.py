"""ONNX export of a ``Translator``: each generator as one ONNX graph with dynamic batch, height and width.

``export_onnx(translator, dest)`` writes a folder, atomically (built in a locked temporary sibling, then
renamed into place)::

    dest/G_AB.onnx      input ``image`` N x C x H x W float32 in [-1, 1], output ``translated`` (same layout)
    dest/G_BA.onnx      (when the translator holds both generators)
    dest/config.json    OnnxExport: the model config, the size multiple H and W must be padded to,
                        the opset and the versions that exported it

The graphs come from PyTorch's torch.export-based exporter (``dynamo=True``, the default since
PyTorch 2.9; the TorchScript one is deprecated). H and W are symbolic, so one graph serves every size
that is a multiple of the generator's size multiple (a runtime pads other sizes and crops the output, as
``Translator`` does). Each graph is checked with onnxruntime against PyTorch on a second
shape before the folder is renamed into place. G_BA of the same layout as G_AB (3 <-> 3 channels) reuses G_AB's
traced graph with its own weights (tracing is most of an export's time), checked the same way. onnx,
onnxscript and onnxruntime are imported here only.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from cyclegan_core.atomic import owned_temp, replace_folder, sweep_stale_temps
from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.model_source import ONNX_FORMAT
from cyclegan_core.inference.pretrained import DIRECTION_FOLDERS, GeneratorLoadError

if TYPE_CHECKING:
    from torch import nn

    from cyclegan_core.inference.translator import Translator

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
INPUT_NAME = "image"
OUTPUT_NAME = "translated"
# largest |ONNX - PyTorch| accepted by the export's own check, in the [-1, 1] output range (float32 ops
# in another order: the parity test measures about 1e-6)
CHECK_TOLERANCE = 1e-4


class OnnxExportError(RuntimeError):
    """The exporter failed or its graph does not reproduce the PyTorch generator; the message says which."""


class OnnxModelError(GeneratorLoadError):
    """An ONNX export folder could not be read; the message names the file and what was wrong."""


class OnnxGenerator(BaseModel):
    """One exported generator: its file in the folder and its channels."""

    model_config = ConfigDict(extra="forbid")

    file: str
    input_channels: int
    output_channels: int


class OnnxExport(BaseModel):
    """``config.json`` of an ONNX export folder."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: Literal["cyclegan-onnx"] = ONNX_FORMAT
    format_version: int = FORMAT_VERSION
    model: ModelConfig
    size_multiple: int
    generators: dict[Literal["AtoB", "BtoA"], OnnxGenerator]
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    opset: int
    exported_with: dict[str, str]


def read_onnx_export(folder: Path) -> OnnxExport:
    """The validated config of an ONNX export folder whose generator files exist."""
    path = Path(folder) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise OnnxModelError(f"{folder} is not an ONNX export: {CONFIG_FILE} is missing "
                             "(write one with `cyclegan export --format onnx`)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OnnxModelError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != ONNX_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise OnnxModelError(f"{path} is not a {ONNX_FORMAT} config (format={found!r}); an exported PyTorch model "
                             "is converted by `cyclegan export --format onnx`")
    if raw.get("format_version") != FORMAT_VERSION:
        raise OnnxModelError(f"{path} has format_version {raw.get('format_version')!r}; this version of "
                             f"cyclegan_core reads {FORMAT_VERSION}: export the model again")
    try:
        export = OnnxExport.model_validate(raw)
    except ValidationError as exc:
        raise OnnxModelError(f"{path}: invalid ONNX export config: {exc}") from exc
    missing = [entry.file for entry in export.generators.values() if not (Path(folder) / entry.file).is_file()]
    if missing:
        raise OnnxModelError(f"{folder} is not a complete ONNX export: {', '.join(missing)} missing")
    return export


def _example_size(multiple: int) -> tuple[int, int]:
    """An example H x W for tracing: at least 32 px (the ResNet bottleneck must stay reflectable), H != W
    so no equality between them is assumed, both multiples of ``multiple``."""
    side = multiple * max(1, -(-32 // multiple))
    return side, side + multiple


def _export_graph(generator: nn.Module, channels: int, multiple: int, opset: int | None) -> torch.onnx.ONNXProgram:
    from torch.export import Dim

    height, width = _example_size(multiple)
    # batch 2: torch.export specialises a dimension whose example size is 1
    example = torch.rand(2, channels, height, width) * 2 - 1
    dynamic = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    # optimize=False: every weight stays an initializer named after its parameter (the exporter's optimiser
    # merges equal ones, e.g. zero biases), so a twin's weights can be applied to the graph; onnxruntime
    # runs its own graph optimisations when it loads the file
    try:
        program = torch.onnx.export(generator, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=(dynamic,), opset_version=opset,
                                    verbose=False, optimize=False)
    except Exception as exc:  # the exporter raises many types (torch.export, onnxscript translation)
        raise OnnxExportError(f"torch.onnx.export failed for {type(generator).__name__}: "
                              f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}") from exc
    if program is None:  # only the TorchScript exporter returns nothing
        raise OnnxExportError("torch.onnx.export returned no ONNX program")
    return program


def _reuse_graph(program: torch.onnx.ONNXProgram, generator: nn.Module, channels: int, multiple: int,
                 dest: Path) -> float | None:
    """Save ``program`` (traced from a generator of the same layout) with ``generator``'s weights; the max
    difference of the check, or None when a weight has no initializer of its name or the check fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program.apply_weights(generator.state_dict())
    if caught:
        logger.info("%s: %d weight(s) have no initializer of their name in the traced graph (first: %s); "
                    "tracing it", dest.name, len(caught), caught[0].message)
        return None
    program.save(str(dest))
    difference = _check_graph(generator, channels, multiple, dest)
    if difference > CHECK_TOLERANCE:
        logger.info("%s: the twin graph does not reproduce it (%.2g); tracing it", dest.name, difference)
        return None
    return difference


def _layout(generator: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in generator.state_dict().items()}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's passes log every rewrite at INFO: keep them to warnings while exporting."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _check_graph(generator: nn.Module, channels: int, multiple: int, path: Path) -> float:
    """Run the saved graph with onnxruntime on a shape unlike the tracing example; max |ONNX - PyTorch|."""
    import onnxruntime as ort

    height, width = _example_size(multiple)
    x = torch.rand(1, channels, height + multiple, width + 2 * multiple, generator=torch.Generator().manual_seed(0))
    x = x * 2 - 1
    with torch.no_grad():
        expected = generator(x).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's constant-folding notes are not the user's business
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise OnnxExportError(f"{path.name} gives shape {got.shape} for input {tuple(x.shape)}, PyTorch gives "
                              f"{expected.shape}: the exported graph is not shape-dynamic")
    return float(np.abs(got - expected).max())


Traced = tuple[dict[str, tuple[int, ...]], "torch.onnx.ONNXProgram"]  # a generator's layout and its traced graph


def _write_graph(generator: nn.Module, channels: int, multiple: int, path: Path, opset: int | None,
                 traced: Traced | None) -> tuple[float, Traced]:
    """Write ``generator``'s graph to ``path`` and check it: the twin of the generator ``traced`` before
    (same layers and shapes) gets that graph with its own weights, saving a second trace (most of an
    export's time); any other, or a twin whose weights do not apply, is traced. Returns the check's max
    difference and what was traced last."""
    if traced is not None and traced[0] == _layout(generator):
        difference = _reuse_graph(traced[1], generator, channels, multiple, path)
        if difference is not None:
            return difference, traced
    logger.info("exporting %s to ONNX ...", path.stem)
    program = _export_graph(generator, channels, multiple, opset)
    program.save(str(path))
    return _check_graph(generator, channels, multiple, path), (_layout(generator), program)


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def export_onnx(translator: Translator, dest: Path, *, opset: int | None = None) -> Path:
    """Write the translator's generators as ONNX graphs into the folder ``dest`` (module docstring);
    returns ``dest``. An existing ``dest`` is replaced only once the new export is complete and checked.
    ``opset`` None: the exporter's default. Raises ``OnnxExportError``."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise OnnxExportError(f"{dest} exists and is not a folder; an ONNX export is a folder")
    started = time.perf_counter()
    sweep_stale_temps(dest.parent, name=dest.name)
    generators: dict[str, OnnxGenerator] = {}
    opsets = set()
    traced: Traced | None = None
    with owned_temp(dest.parent, dest.name, folder=True) as build, _quiet_exporter():
        for direction in translator.directions:
            # a CPU fp32 copy: the caller's generator keeps its device and mode
            generator = copy.deepcopy(translator.generator(direction)).to("cpu", torch.float32).eval()
            channels, multiple = translator.input_channels(direction), translator.multiple(direction)
            name = f"{DIRECTION_FOLDERS[direction]}.onnx"
            difference, traced = _write_graph(generator, channels, multiple, build / name, opset, traced)
            if difference > CHECK_TOLERANCE:
                raise OnnxExportError(f"{name} differs from the PyTorch generator by up to {difference:.3g} "
                                      f"(tolerance {CHECK_TOLERANCE}); not writing {dest}")
            logger.info("%s checked with onnxruntime: max |ONNX - PyTorch| = %.2g", name, difference)
            written = _opset_of(build / name)
            if opset is not None and written != opset:  # the exporter falls back when it cannot convert
                raise OnnxExportError(f"opset {opset} was asked, the exporter wrote opset {written} (its version "
                                      f"converter cannot produce {opset} for this graph); not writing {dest}: ask "
                                      f"for opset {written} or none")
            opsets.add(written)
            out_channels = translator.config.output_nc if direction == "AtoB" else translator.config.input_nc
            generators[direction] = OnnxGenerator(file=name, input_channels=channels, output_channels=out_channels)
        export = OnnxExport(model=translator.config, size_multiple=translator.multiple(translator.directions[0]),
                            generators=generators, opset=max(opsets), exported_with=_versions())
        (build / CONFIG_FILE).write_text(json.dumps(export.model_dump(mode="json"), indent=2) + "\n")
        replace_folder(build, dest)
    logger.info("exported %s to %s (opset %d) in %.1fs", ", ".join(f"{DIRECTION_FOLDERS[d]}.onnx" for d in generators),
                dest, export.opset, time.perf_counter() - started)
    return dest
