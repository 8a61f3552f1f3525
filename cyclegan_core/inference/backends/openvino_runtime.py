"""``OpenVinoTranslator``: a model's generators converted to OpenVINO and run on the CPU (fp32, bf16, int8).

Conversion (``openvino.convert_model`` of the PyTorch generator, dynamic N, H and W) takes about a
second; ``model_cache`` keeps its result on disk, keyed by the generator's weights, the library versions
and the CPU, so a second process or a new Ray actor reads it instead of converting (int8: the
NNCF-quantized model, keyed by its calibration images too).
Compiling for the CPU (``INFERENCE_PRECISION_HINT`` f32 or bf16) takes ~0.1 s and is done per process.
Inputs are padded and cropped exactly as ``Translator`` pads them. An image over the memory budget goes
through the torch translator's tiler, whose tiles OpenVINO runs (``OpenVinoTiles``: the generator with the
thumbnail's statistics frozen, converted per image). Any OpenVINO failure at run time switches this
translator to its torch twin with one warning line: a batch never stops halfway.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cyclegan_core.inference.backends.host import HostIdentity, digest, package_version
from cyclegan_core.inference.backends.libraries import import_openvino, signal_stack_kept
from cyclegan_core.inference.backends.model_cache import cached_model, model_key
from cyclegan_core.inference.backends.quantize import calibration_arrays, quantize
from cyclegan_core.inference.memory import default_budget, forward_bytes, used_bytes
from cyclegan_core.inference.tiling import TileNet
from cyclegan_core.inference.translator import (
    Translator,
    by_size,
    in_mode,
    pad_to_multiple,
    pil_mode,
    pil_to_tensor,
    tensor_to_pil,
)
from cyclegan_core.precision import ResolvedPrecision

logger = logging.getLogger(__name__)

_CPU = torch.device("cpu")


def convert(net: nn.Module, *, channels: int, multiple: int) -> Any:
    """``net`` (eval mode, fp32) as an OpenVINO model with dynamic N, H and W (H, W multiples of ``multiple``)."""
    ov = import_openvino()
    side = max(64, multiple)
    was_training = net.training
    net.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation, inside the converter
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return ov.convert_model(net, example_input=torch.zeros(1, channels, side, side),
                                    input=[ov.PartialShape([-1, channels, -1, -1])])
    finally:
        net.train(was_training)


def compile_model(model: Any, precision: str, threads: int) -> Any:
    """``model`` compiled for the CPU: bf16 computes in bf16 where the CPU does, fp32 and int8 keep f32 for
    what is not quantized (OpenVINO's default on a bf16 CPU would be bf16)."""
    ov = import_openvino()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": threads}
    with signal_stack_kept():  # libraries.py: OpenVINO's signal stack would outlive the model
        return ov.Core().compile_model(model, "CPU", config)


@dataclass
class OpenVinoTiles:
    """Runs the tiles of a large image through OpenVINO (``translator.TileEngine``): the generator with the
    thumbnail's statistics frozen is converted per image (~1 s, small next to the tiles of an image that
    needs them); a failure leaves the tiles to PyTorch, with a warning."""

    precision: str  # fp32 or bf16 (int8 models tile in fp32: quantizing needs calibration per image)
    threads: int
    channels: int
    multiple: int

    @property
    def name(self) -> str:
        return f"OpenVINO {self.precision} tiles"

    def overhead_bytes(self, net: nn.Module) -> int:
        """The converter's libraries (~100 MB measured) and two copies of the weights (the converted model,
        the compiled one), on top of what the tiles' passes take."""
        return 128 * 2**20 + 2 * sum(p.numel() * p.element_size() for p in net.parameters())

    def compile(self, net: nn.Module, precision: ResolvedPrecision) -> TileNet:
        try:
            compiled = compile_model(convert(net, channels=self.channels, multiple=self.multiple), self.precision,
                                     self.threads)
        except Exception as exc:  # noqa: BLE001 - the PyTorch tiler is the fallback
            logger.warning("OpenVINO could not compile the tiles (%s): the PyTorch tiler (%s) runs them",
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__, precision)
            return net
        request = compiled.create_infer_request()
        return lambda tile: torch.from_numpy(np.array(request.infer({0: tile.numpy()})[0]))


@dataclass
class _Shared:
    """State every copy of one translator shares: whether OpenVINO failed (then torch runs)."""

    failed: str | None = None
    compiled: dict[str, Any] = field(default_factory=dict)


class OpenVinoTranslator:
    """The generators of a ``Translator`` compiled by OpenVINO; the translator itself is the torch twin that
    runs when OpenVINO fails. Built by ``load_translator`` (``build``)."""

    def __init__(self, twin: Translator, compiled: dict[str, Any], *, precision: str, reason: str, threads: int,
                 memory_budget: int | None = None) -> None:
        self.config = twin.config
        self.directions = twin.directions
        self.precision = precision
        self.reason = reason
        self.memory_budget = memory_budget
        self.threads = threads
        self._twin = twin
        self._shared = _Shared(compiled=compiled)
        self._tiles = OpenVinoTiles("bf16" if precision == "bf16" else "fp32", threads,
                                    channels=twin.input_channels("AtoB"), multiple=twin.multiple("AtoB"))

    # --- access -------------------------------------------------------------------------------------
    def multiple(self, direction: str = "AtoB") -> int:
        return self._twin.multiple(direction)

    def input_channels(self, direction: str = "AtoB") -> int:
        return self._twin.input_channels(direction)

    def describe(self) -> str:
        if self._shared.failed:
            return f"{self._torch().describe()} (OpenVINO {self.precision} failed: {self._shared.failed})"
        return f"openvino {self.precision}" + (f" ({self.reason})" if self.reason else "")

    def _torch(self, *, tiles: bool = False) -> Translator:
        """The torch twin with this translator's budget (a copy: copies of this translator stay independent)."""
        twin = copy.copy(self._twin)
        twin.memory_budget = self.memory_budget
        twin.tile_engine = self._tiles if tiles and not self._shared.failed else None
        return twin

    def _fail(self, what: str, exc: BaseException) -> None:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._shared.failed = f"{what}: {detail}"
        logger.warning("OpenVINO %s failed %s (%s): translating with torch %s from here on", self.precision, what,
                       detail, self._twin.precision)

    def _free_memory(self) -> int:
        budget = default_budget(_CPU) if self.memory_budget is None else self.memory_budget
        return budget - used_bytes(_CPU)

    # --- inference ----------------------------------------------------------------------------------
    def translate_tensor(self, images: torch.Tensor, *, direction: str = "AtoB", batch_size: int = 8) -> torch.Tensor:
        """Translate an N x C x H x W (or C x H x W) float batch in [-1, 1] that fits the memory budget;
        returns contiguous float32 in [-1, 1] (images over the budget: use ``__call__``, which tiles)."""
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        height, width = batch.shape[-2:]
        multiple = self.multiple(direction)
        per_image = forward_bytes(self.config, height + -height % multiple, width + -width % multiple)
        step = max(1, min(batch_size, self._free_memory() // per_image))
        result = torch.cat([self._translate_group(chunk, direction) for chunk in batch.split(step)])
        return result[0] if single else result

    def _translate_group(self, batch: torch.Tensor, direction: str) -> torch.Tensor:
        if not self._shared.failed:
            try:
                return self._infer(batch, direction)
            except Exception as exc:  # noqa: BLE001 - the torch twin takes over, the batch goes on
                self._fail("at inference", exc)
        return self._torch().translate_tensor(batch, direction=direction, batch_size=len(batch))

    def _infer(self, batch: torch.Tensor, direction: str) -> torch.Tensor:
        compiled = self._shared.compiled.get(direction)
        if compiled is None:
            self._twin.generator(direction)  # the twin's error for a direction this model lacks
            raise ValueError(f"no compiled {direction} generator")
        height, width = batch.shape[-2:]
        padded, (left, _, top, _) = pad_to_multiple(batch.to(_CPU, torch.float32), self.multiple(direction))
        out = compiled.create_infer_request().infer({0: padded.contiguous().numpy()})[0]
        return torch.from_numpy(np.array(out[:, :, top:top + height, left:left + width])).clamp_(-1.0, 1.0)

    def __call__(self, images: Sequence[Image.Image], *, direction: str = "AtoB",
                 batch_size: int = 8) -> list[Image.Image]:
        """Translate PIL images of any sizes in the input order (RGB for 3-channel generators, L for
        1-channel ones); images over the memory budget are tiled (OpenVINO runs the tiles)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mode = pil_mode(self.input_channels(direction), direction)
        multiple = self.multiple(direction)
        results: list[Image.Image | None] = [None] * len(images)
        for (width, height), indices in by_size(images).items():
            per_image = forward_bytes(self.config, height + -height % multiple, width + -width % multiple)
            free = self._free_memory()
            if per_image > free:  # the torch twin plans the tiles, OpenVINO runs them
                tiler = self._torch(tiles=True)
                for i in indices:
                    results[i] = tiler([images[i]], direction=direction, batch_size=1)[0]
                continue
            step = max(1, min(batch_size, free // per_image))
            for start in range(0, len(indices), step):
                group = indices[start:start + step]
                batch = torch.stack([pil_to_tensor(in_mode(images[i], mode)) for i in group])
                for i, tensor in zip(group, self._translate_group(batch, direction), strict=True):
                    results[i] = tensor_to_pil(tensor)
        return [image for image in results if image is not None]

    def __repr__(self) -> str:
        return f"OpenVinoTranslator({self.describe()}, directions={self.directions})"


def build(twin: Translator, *, precision: str, reason: str, cache_dir: Path | None, host: HostIdentity,
          calibration: Sequence[Image.Image] | None = None, fallback: str | None = None) -> OpenVinoTranslator:
    """Convert (or read from the cache) and compile ``twin``'s generators; raises whatever OpenVINO raises
    (``load_translator`` then falls back to torch). int8 quantizes with NNCF on ``calibration``. The twin
    runs at ``fallback`` should OpenVINO fail later (None: bf16 for bf16, else fp32)."""
    compiled = {}
    for direction in twin.directions:
        net, channels, multiple = twin.generator(direction), twin.input_channels(direction), twin.multiple(direction)

        def fp32_model(net: nn.Module = net, channels: int = channels, multiple: int = multiple) -> Any:
            return cached_model(cache_dir, "fp32", model_key(net, host, variant="fp32"),
                                lambda: convert(net, channels=channels, multiple=multiple))

        if precision == "int8":
            if not calibration:
                raise ValueError("int8 needs calibration images of the model's input domain")
            arrays = calibration_arrays(calibration, channels=channels, multiple=multiple)
            extra = {"calibration": digest(*(hashlib.sha256(a.tobytes()).hexdigest() for a in arrays)),
                     "nncf": package_version("nncf")}
            model = cached_model(cache_dir, "int8", model_key(net, host, variant="int8", extra=extra),
                                 lambda fp32_model=fp32_model, arrays=arrays: quantize(fp32_model(), arrays))
        else:
            model = fp32_model()
        compiled[direction] = compile_model(model, precision, host.threads)
    twin.precision = fallback or ("bf16" if precision == "bf16" else "fp32")
    return OpenVinoTranslator(twin, compiled, precision=precision, reason=reason, threads=host.threads,
                              memory_budget=twin.memory_budget)
