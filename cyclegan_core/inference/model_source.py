"""What a ``--model`` names, classified once: ``ModelSource`` (a registry URI or a local file or folder).

Every entry (translate, the batch job, serving, export) parses its model here, so each accepts and refuses
the same things with the same reasons. The registry forms are resolved to a local path by
``pipelines.registry.sources`` (MLflow lives there); local forms are told apart by what is on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cyclegan_core.inference.pretrained import CONFIG_FILE, DIRECTION_FOLDERS, GeneratorLoadError

ModelKind = Literal["registered", "run", "model_folder", "generator_folder", "official_pth", "onnx_export",
                    "openvino_ir"]
REGISTRY_KINDS: tuple[ModelKind, ...] = ("registered", "run")
TRANSLATABLE_KINDS: tuple[ModelKind, ...] = ("model_folder", "generator_folder", "official_pth")
OPENVINO_IR = "model.xml"
ONNX_FORMAT = "cyclegan-onnx"  # config.json's format in a `cyclegan export --format onnx` folder


@dataclass(frozen=True)
class ModelSource:
    """A model as asked for (``uri``: ``models:/name@alias``, ``runs:/id/path`` or a local path) and its kind."""

    uri: str
    kind: ModelKind

    @property
    def is_registry(self) -> bool:
        return self.kind in REGISTRY_KINDS

    @property
    def path(self) -> Path:
        """The local file or folder (a local kind only)."""
        if self.is_registry:
            raise ValueError(f"{self.uri} is a registry URI, not a local path: resolve it first")
        return Path(self.uri).expanduser()


def is_registry_uri(model: str | Path) -> bool:
    return str(model).startswith(("models:/", "runs:/"))


def is_onnx_export(path: Path) -> bool:
    """Whether ``path`` is a folder ``cyclegan_core.onnx_export`` wrote (its config.json says so)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == ONNX_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def parse_model_source(model: str | Path) -> ModelSource:
    """The source ``model`` names. A local path is classified from disk (``local_model_kind``: raises
    GeneratorLoadError when it is no model); a registry URI is not looked up here."""
    text = str(model)
    if text.startswith("models:/"):
        return ModelSource(text, "registered")
    if text.startswith("runs:/"):
        return ModelSource(text, "run")
    return ModelSource(text, local_model_kind(Path(text).expanduser()))


def local_model_kind(path: Path) -> ModelKind:
    """Which local model ``path`` is: an exported model folder (``G_AB/`` + ``G_BA/``), one exported generator
    folder, an official ``.pth`` (any other file), an ONNX export or an OpenVINO IR. Raises GeneratorLoadError
    naming what is missing."""
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            return "onnx_export"
        return "openvino_ir" if path.suffix.lower() == ".xml" else "official_pth"
    if not path.is_dir():
        raise GeneratorLoadError(f"{path} does not exist (expected an exported generator/model folder or a .pth)")
    if is_onnx_export(path):
        return "onnx_export"
    if (path / CONFIG_FILE).is_file():
        return "generator_folder"
    if (path / OPENVINO_IR).is_file():
        return "openvino_ir"
    missing = [f"{folder}/" for folder in DIRECTION_FOLDERS.values() if not (path / folder).is_dir()]
    if missing:
        raise GeneratorLoadError(f"{path} is neither an exported generator (no {CONFIG_FILE}) nor an exported "
                                 f"model (no {' or '.join(missing)})")
    return "model_folder"


def check_translatable(source: ModelSource) -> None:
    """Refuse, with the reason and what to use instead, a local source the translator cannot load."""
    if source.kind == "onnx_export":
        raise GeneratorLoadError(f"{source.uri} is an ONNX export (`cyclegan export --format onnx`), made for other "
                                 "runtimes; translate with the model it was exported from (backend auto or "
                                 "openvino runs it fast on the CPU)")
    if source.kind == "openvino_ir":
        raise GeneratorLoadError(f"{source.uri} is an OpenVINO IR (model.xml), a converted graph without the "
                                 "model's config; translate with the exported model it was converted from "
                                 "(--backend openvino converts and caches it)")

