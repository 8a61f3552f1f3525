"""``OnnxTranslator``: the generators of an ONNX export folder (``cyclegan_core.onnx_export``) run by
onnxruntime on the CPU, with the interface of ``Translator`` that ``translate_path`` uses.

Inputs of any H x W are reflection-padded in numpy (replicated where too small to reflect) up to the
size multiple, split evenly as ``Translator`` splits them, and the output is cropped back, so an
image gets the pixels ``Translator`` gives it up to float32 rounding. Images are converted to and
from [-1, 1] exactly as ``Translator`` converts them. The graphs are fp32: ``precision`` "auto" and
"fp32" run them, half precisions are refused. There is no tiling: an image whose forward pass does
not fit the memory budget is refused, naming ``--backend torch`` (which tiles).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cyclegan_core.memory import default_budget, format_bytes, forward_bytes, used_bytes
from cyclegan_core.onnx_export import OnnxExport, OnnxModelError, read_onnx_export
from cyclegan_core.pretrained import check_direction
from cyclegan_core.tiling import pad_amounts, reflectable

logger = logging.getLogger(__name__)

_CPU = torch.device("cpu")


def pad_array(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pad the last two axes of N x C x H x W up to ``multiple`` as ``translator.pad_to_multiple`` does."""
    height, width = x.shape[-2:]
    left, right, top, bottom = pads = pad_amounts(height, width, multiple)
    if not any(pads):
        return x, pads
    mode = "reflect" if reflectable(pads, height, width) else "edge"
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode), pads


def image_to_array(image: Image.Image) -> np.ndarray:
    """An RGB or L image as C x H x W float32 in [-1, 1] (as ``translator.pil_to_tensor``)."""
    pixels = np.asarray(image, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def array_to_image(x: np.ndarray) -> Image.Image:
    """C x H x W float in [-1, 1] as a PIL image (as ``translator.tensor_to_pil``: round half to even)."""
    pixels = np.clip(np.round((x.astype(np.float32) + np.float32(1.0)) * np.float32(127.5)), 0, 255)
    pixels = pixels.astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


class OnnxTranslator:
    """The generators of an ONNX export, one onnxruntime session each (``from_folder``)."""

    def __init__(self, sessions: dict[str, Any], export: OnnxExport, *, source: Path,
                 memory_budget: int | None = None) -> None:
        self.export = export
        self.config = export.model
        self.source = source
        # bytes the process may hold while translating (None: memory.default_budget at each call)
        self.memory_budget = memory_budget
        self._sessions = sessions
        self.directions: tuple[str, ...] = tuple(sessions)

    @classmethod
    def from_folder(cls, path: str | Path, *, threads: int | None = None,
                    memory_budget: int | None = None) -> OnnxTranslator:
        """Load ``G_AB.onnx`` (and ``G_BA.onnx``) of an export folder; ``threads`` None: onnxruntime's
        default (one per core)."""
        import onnxruntime as ort

        folder = Path(path)
        export = read_onnx_export(folder)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings only about onnxruntime's own graph rewrites
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 (or None for onnxruntime's default), got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        sessions = {}
        for direction, entry in export.generators.items():
            try:
                sessions[direction] = ort.InferenceSession(str(folder / entry.file), options,
                                                           providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
                raise OnnxModelError(f"{folder / entry.file} is not a loadable ONNX graph ({exc})") from exc
        logger.info("loaded ONNX export %s (%s) with onnxruntime %s", folder, ", ".join(sessions), ort.__version__)
        return cls(sessions, export, source=folder, memory_budget=memory_budget)

    # --- access -------------------------------------------------------------------------------------
    def _session(self, direction: str) -> Any:
        check_direction(direction)
        if direction not in self._sessions:
            raise ValueError(f"the ONNX export {self.source} holds one generator (AtoB); it has no {direction} one")
        return self._sessions[direction]

    def multiple(self, direction: str = "AtoB") -> int:
        """Input H and W are padded up to a multiple of this for ``direction``'s generator."""
        self._session(direction)
        return self.export.size_multiple

    def input_channels(self, direction: str = "AtoB") -> int:
        self._session(direction)
        return self.export.generators[direction].input_channels  # type: ignore[index]

    # --- inference ----------------------------------------------------------------------------------
    def translate_array(self, x: np.ndarray, direction: str = "AtoB") -> np.ndarray:
        """Translate an N x C x H x W float32 batch in [-1, 1] (any H, W); returns N x C' x H x W in [-1, 1]."""
        session, multiple = self._session(direction), self.multiple(direction)
        channels = self.input_channels(direction)
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"the {direction} generator takes N x {channels} x H x W, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        padded, (left, _, top, _) = pad_array(np.ascontiguousarray(x, dtype=np.float32), multiple)
        out = session.run([self.export.output_name], {self.export.input_name: padded})[0]
        return np.clip(out[:, :, top:top + height, left:left + width], -1.0, 1.0)

    def _free_memory(self) -> int:
        """What the budget leaves for translation after what the process holds now."""
        budget = default_budget(_CPU) if self.memory_budget is None else self.memory_budget
        return budget - used_bytes(_CPU)

    def _images_per_pass(self, height: int, width: int, batch_size: int) -> int:
        """How many images of this size one pass may take within the budget (as ``Translator`` splits
        batches); refuses a size whose single pass does not fit, since there are no tiles here."""
        multiple = self.export.size_multiple
        per_image = forward_bytes(self.config, height + -height % multiple, width + -width % multiple)
        free = self._free_memory()
        if per_image > free:
            raise ValueError(f"a {width}x{height} image needs ~{format_bytes(per_image)} in one forward pass and "
                             f"the memory budget leaves {format_bytes(max(free, 0))}; the onnxruntime backend does "
                             "not translate by tiles: use --backend torch (it tiles large images) or a larger "
                             "--memory-budget")
        return max(1, min(batch_size, free // per_image))

    def __call__(self, images: Sequence[Image.Image], *, direction: str = "AtoB", batch_size: int = 8,
                 precision: str = "auto") -> list[Image.Image]:
        """Translate PIL images of any sizes (RGB for 3-channel generators, L for 1-channel ones); returns
        them in the input order, batching images of one size by ``batch_size``."""
        if precision not in ("auto", "fp32"):
            raise ValueError(f"the onnxruntime backend runs the fp32 graphs; precision {precision!r} needs "
                             "--backend torch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        channels = self.input_channels(direction)
        if channels not in (1, 3):
            raise ValueError(f"PIL images can feed 1- or 3-channel generators; the {direction} generator takes "
                             f"{channels} channels: use translate_array")
        mode = "L" if channels == 1 else "RGB"
        results: list[Image.Image | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for (width, height), indices in by_size.items():
            per_batch = self._images_per_pass(height, width, batch_size)
            for start in range(0, len(indices), per_batch):
                group = indices[start:start + per_batch]
                batch = np.stack([image_to_array(images[i].convert(mode)) for i in group])
                for i, out in zip(group, self.translate_array(batch, direction), strict=True):
                    results[i] = array_to_image(out)
        return [image for image in results if image is not None]

    def __str__(self) -> str:  # what a TranslateSummary names as its model
        return str(self.source)

    def __repr__(self) -> str:
        return f"OnnxTranslator({self.source}, directions={self.directions})"
