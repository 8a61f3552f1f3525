"""Inference: the Translator and the ways a model is loaded, run and written.

Modules: ``translator`` (Translator: both generators, whole-image or tiled passes), ``tiling`` and
``tile_statistics`` (images over the memory budget), ``memory`` (the budget), ``pretrained`` (exported
folders and official ``.pth`` files), ``files`` (translating image files and folders), ``onnx_export``,
``backends`` (PyTorch or OpenVINO behind ``TranslatorLike``, ``auto`` measured). Names imported on first
use (``cyclegan_core._lazy``).
"""

from typing import TYPE_CHECKING

from cyclegan_core._lazy import lazy_attributes

if TYPE_CHECKING:
    from cyclegan_core.inference.backends import TranslatorLike, load_translator
    from cyclegan_core.inference.files import TranslateSummary, translate_path
    from cyclegan_core.inference.onnx_export import export_onnx
    from cyclegan_core.inference.pretrained import GeneratorLoadError
    from cyclegan_core.inference.tiling import Tiling
    from cyclegan_core.inference.translator import Translator

__all__ = [
    "GeneratorLoadError",
    "Tiling",
    "TranslateSummary",
    "Translator",
    "TranslatorLike",
    "export_onnx",
    "load_translator",
    "translate_path",
]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "backends": ["TranslatorLike", "load_translator"],
    "files": ["TranslateSummary", "translate_path"],
    "onnx_export": ["export_onnx"],
    "pretrained": ["GeneratorLoadError"],
    "tiling": ["Tiling"],
    "translator": ["Translator"],
})
