"""The inference object: ``Translator`` owns the generators of a model and runs them on tensors or images.

Like a diffusers pipeline: ``Translator.from_pretrained(path)`` loads an exported model folder
(``G_AB/`` + ``G_BA/``), one exported generator folder or an official ``.pth`` (architecture inferred);
``Translator.from_checkpoint(path)`` rebuilds the two generators of a training checkpoint;
``save_pretrained(dest)`` writes the exported format. ``translate_tensor`` takes any H x W: inputs are
reflection-padded (symmetrically) up to the generator's size multiple and the output is cropped
back. Calling the translator on PIL images returns PIL images in the input order, batching images
of equal size. A single generator is held as the A->B one. ``precision`` is bound to the translator
(``Translator.precision``; a call may name another): ``"auto"`` is bf16 on CUDA and fp32 on the CPU,
where the measured choice is ``cyclegan_core.inference.backends.load_translator``'s; bf16 on CPU converts the
generator to channels_last (once, back to NCHW for an fp32 call) and each input batch; outputs are
contiguous NCHW float32. ``tile_engine`` lets another runtime run the tiles of a large image
(``cyclegan_core.inference.backends`` runs them through OpenVINO); None: PyTorch runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.transforms import to_float_chw
from cyclegan_core.inference.memory import (
    TILE_HEADROOM,
    MemoryBudgetError,
    default_budget,
    format_bytes,
    forward_bytes,
    largest_tile,
    used_bytes,
)
from cyclegan_core.inference.model_source import check_translatable, parse_model_source
from cyclegan_core.inference.pretrained import (
    DIRECTION_FOLDERS,
    GeneratorLoadError,
    build_loaded,
    check_direction,
    load_generator_folder,
    load_official_generator,
    save_generators,
    swapped_channels,
    unwrap,
)
from cyclegan_core.inference.tiling import (
    MIN_THUMBNAIL,
    Reader,
    Sink,
    TileEngine,
    TilePlan,
    Tiling,
    array_reader,
    array_sink,
    default_overlap,
    pad_amounts,
    plan_tiles,
    reflectable,
    tensor_reader,
    tensor_sink,
    translate_tiled,
)
from cyclegan_core.networks import size_multiple
from cyclegan_core.networks.official import describe_config
from cyclegan_core.precision import ResolvedPrecision, autocast, channels_last_on, resolve_precision
from cyclegan_core.training.checkpoint import CheckpointError, read_checkpoint

logger = logging.getLogger(__name__)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB (or L) PIL image as a C x H x W float tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return to_float_chw(array[:, :, None] if array.ndim == 2 else array)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """A C x H x W tensor in [-1, 1] (C = 1 or 3) as a PIL image."""
    array = tensor.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    array = array.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def pil_mode(channels: int, direction: str) -> str:
    """The PIL mode a generator of ``channels`` input channels reads: RGB for 3, L (greyscale) for 1."""
    if channels not in (1, 3):
        raise ValueError(f"PIL images can feed 1- or 3-channel generators; the {direction} generator takes "
                         f"{channels} channels: use translate_tensor")
    return "L" if channels == 1 else "RGB"


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in PIL ``mode``: itself when it is in that mode already (``convert`` would copy it, 256 MiB
    for a 64-megapixel RGB image)."""
    return image if image.mode == mode else image.convert(mode)


def by_size(images: Sequence[Image.Image]) -> dict[tuple[int, int], list[int]]:
    """The indices of ``images`` grouped by (width, height), in first-seen order: one size, one batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.size, []).append(index)
    return groups


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad H and W up to ``multiple`` (reflection; replicate where the image is too small to reflect)."""
    height, width = x.shape[-2:]
    pads = pad_amounts(height, width, multiple)  # left, right, top, bottom
    if not any(pads):
        return x, pads
    return F.pad(x, pads, mode="reflect" if reflectable(pads, height, width) else "replicate"), pads


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, restoring the caller's mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Translator:
    """Both generators of a model (``G_BA`` may be None) with their size multiples; ``config`` is G_AB's."""

    def __init__(self, G_AB: nn.Module, G_BA: nn.Module | None, config: ModelConfig, *,
                 memory_budget: int | None = None, tiling: Tiling | None = None, precision: str = "auto") -> None:
        self.config = config
        # bytes the process may hold while translating (None: memory.default_budget at each call); an
        # image whose forward pass does not fit in what is left is translated by tiles (``tiling``)
        self.memory_budget = memory_budget
        self.tiling = tiling or Tiling()
        self.precision = precision  # what a call without ``precision`` runs at
        self.reason = ""  # why this precision (``describe``), set by whoever chose it
        self.tile_engine: TileEngine | None = None
        self._generators = {"AtoB": unwrap(G_AB)}
        if G_BA is not None:
            self._generators["BtoA"] = unwrap(G_BA)
        self.directions: tuple[str, ...] = tuple(self._generators)
        self._multiples = dict.fromkeys(self.directions, size_multiple(config.generator))
        self._channels_last = dict.fromkeys(self.directions, False)  # each generator's memory format now
        parameter = next(self._generators["AtoB"].parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")

    # --- loading and saving -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        memory_budget: int | None = None) -> Translator:
        """An exported model folder (``G_AB/`` + ``G_BA/``), one exported generator folder, or an official
        ``.pth`` whose architecture is inferred from its state dict. ``device`` None: CUDA if available."""
        source = parse_model_source(Path(path))  # GeneratorLoadError: not a model
        check_translatable(source)
        path = source.path
        if source.kind == "generator_folder":
            net, cfg = load_generator_folder(path)
            translator = cls(net, None, cfg)
        elif source.kind == "model_folder":
            g_ab, cfg = load_generator_folder(path / DIRECTION_FOLDERS["AtoB"])
            g_ba, cfg_ba = load_generator_folder(path / DIRECTION_FOLDERS["BtoA"])
            if cfg_ba != swapped_channels(cfg):
                raise GeneratorLoadError(f"{path}: G_BA/ ({describe_config(cfg_ba)}) is not the B->A twin of "
                                         f"G_AB/ ({describe_config(cfg)}); export the pair together")
            translator = cls(g_ab, g_ba, cfg)
        else:
            net, cfg = load_official_generator(path)
            translator = cls(net, None, cfg)
        translator.memory_budget = memory_budget
        return translator.to(_default_device(device))

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "cpu") -> Translator:
        """The two generators of a cyclegan_core training checkpoint, rebuilt from its own model config
        (no discriminators, optimizers or RNG reseed)."""
        path = Path(path)
        state = read_checkpoint(path)["state"]
        try:
            cfg = ModelConfig.model_validate(state["model_config"])
            nets = state["nets"]
            g_ab = build_loaded(cfg, nets["G_AB"], path)
            g_ba = build_loaded(swapped_channels(cfg), nets["G_BA"], path)
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {path} lacks {exc.args[0]!r} in its state") from exc
        except ValidationError as exc:
            raise CheckpointError(f"checkpoint {path} holds an invalid model config: {exc}") from exc
        return cls(g_ab, g_ba, cfg).to(device)

    def save_pretrained(self, dest: str | Path) -> Path:
        """Write ``dest/G_AB`` and ``dest/G_BA`` (one generator: a generator folder at ``dest``), atomically."""
        return save_generators(self._generators, self.config, Path(dest))

    def to(self, device: str | torch.device) -> Translator:
        """Move the generators to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        for net in self._generators.values():
            net.to(self.device)
        return self

    # --- access -------------------------------------------------------------------------------------
    def generator(self, direction: str = "AtoB") -> nn.Module:
        """The generator of ``direction`` (the plain module)."""
        check_direction(direction)
        if direction not in self._generators:
            raise ValueError(f"this translator holds one generator (AtoB); it has no {direction} generator")
        return self._generators[direction]

    def multiple(self, direction: str = "AtoB") -> int:
        """Input H and W are padded up to a multiple of this for ``direction``'s generator."""
        self.generator(direction)
        return self._multiples[direction]

    def input_channels(self, direction: str = "AtoB") -> int:
        self.generator(direction)
        return self.config.input_nc if direction == "AtoB" else self.config.output_nc

    def describe(self) -> str:
        """One line: backend, precision and why (``TranslatorLike.describe``)."""
        resolved = resolve_precision(self.precision, self.device)
        label = resolved if self.precision != "auto" else f"{resolved} (auto on {self.device.type})"
        return f"torch {label}" + (f" ({self.reason})" if self.reason else "")

    # --- inference ----------------------------------------------------------------------------------
    def translate_tensor(self, images: torch.Tensor, *, direction: str = "AtoB", batch_size: int = 8,
                         precision: str | None = None) -> torch.Tensor:
        """Translate an N x C x H x W (or C x H x W) float batch in [-1, 1]; returns the same layout and device.

        Runs on the translator's device in eval mode without autograd at ``precision`` (None: the bound
        ``self.precision``; ``"auto"``: bf16 autocast on CUDA, fp32 on CPU). The output is contiguous float32 in
        [-1, 1]. Batches are split to fit the memory budget; an image whose single forward pass does not
        fit is translated by tiles.
        """
        if images.dim() not in (3, 4):
            raise ValueError(f"images must be C x H x W or N x C x H x W, got shape {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator, multiple = self.generator(direction), self.multiple(direction)
        resolved = resolve_precision(self.precision if precision is None else precision, self.device)
        memory_format = self._memory_format(direction, resolved)
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        height, width = batch.shape[-2:]
        free = self._free_memory()
        per_image = forward_bytes(self.config, height + -height % multiple, width + -width % multiple,
                                  precision=resolved)
        if per_image > free:
            result = torch.empty(batch.shape[0], self._output_channels(direction), height, width,
                                 device=images.device)
            for index, image in enumerate(batch):
                self._translate_by_tiles(direction, resolved, (height, width), per_image, free - result.nbytes,
                                         lambda plan, pads, image=image: tensor_reader(image, pads, plan, self.device),
                                         tensor_sink(result[index]))
            return result[0] if single else result
        outputs = []
        # no_grad rather than inference_mode: inference tensors cannot be modified in place later,
        # which would surprise callers that post-process the result.
        with _eval_mode(generator), torch.no_grad(), autocast(self.device, resolved):
            for chunk in batch.split(max(1, min(batch_size, free // per_image))):
                padded, (left, _, top, _) = pad_to_multiple(chunk.to(self.device, torch.float32), multiple)
                out = generator(padded.contiguous(memory_format=memory_format))[..., top:top + height,
                                                                                  left:left + width]
                outputs.append(out.float().clamp_(-1.0, 1.0).to(images.device).contiguous())
        result = torch.cat(outputs)
        return result[0] if single else result

    def __call__(self, images: Sequence[Image.Image], *, direction: str = "AtoB", batch_size: int = 8,
                 precision: str | None = None) -> list[Image.Image]:
        """Translate PIL images of any sizes; returns them in the input order.

        Images are converted to RGB for 3-channel generators and to L (greyscale) for 1-channel ones.
        An image too large for the memory budget goes tile by tile from its uint8 pixels to uint8 output.
        """
        mode = pil_mode(self.input_channels(direction), direction)
        multiple = self.multiple(direction)
        precision = self.precision if precision is None else precision
        resolved = resolve_precision(precision, self.device)
        results: list[Image.Image | None] = [None] * len(images)
        for (width, height), indices in by_size(images).items():
            per_image = forward_bytes(self.config, height + -height % multiple, width + -width % multiple,
                                      precision=resolved)
            if per_image > self._free_memory():
                for i in indices:
                    results[i] = self._translate_pil_by_tiles(in_mode(images[i], mode), direction, precision,
                                                              per_image)
                continue
            for start in range(0, len(indices), batch_size):
                group = indices[start:start + batch_size]
                batch = torch.stack([pil_to_tensor(in_mode(images[i], mode)) for i in group])
                out = self.translate_tensor(batch, direction=direction, batch_size=batch_size, precision=precision)
                for i, tensor in zip(group, out, strict=True):
                    results[i] = tensor_to_pil(tensor)
        return [image for image in results if image is not None]

    def _memory_format(self, direction: str, precision: ResolvedPrecision) -> torch.memory_format:
        """Put ``direction``'s generator in the memory format of ``precision`` on this device (a no-op when
        it is there already) and return the format its inputs should have."""
        wanted = channels_last_on(self.device, precision)
        memory_format = torch.channels_last if wanted else torch.contiguous_format
        if self._channels_last[direction] != wanted:
            self._generators[direction].to(memory_format=memory_format)
            self._channels_last[direction] = wanted
        return memory_format

    # --- tiles --------------------------------------------------------------------------------------
    def _free_memory(self) -> int:
        """What the budget leaves for translation after what the process holds now."""
        budget = default_budget(self.device) if self.memory_budget is None else self.memory_budget
        return budget - used_bytes(self.device)

    def _output_channels(self, direction: str) -> int:
        return self.config.output_nc if direction == "AtoB" else self.config.input_nc

    def _translate_pil_by_tiles(self, image: Image.Image, direction: str, precision: str,
                                per_image: int) -> Image.Image:
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        height, width = pixels.shape[:2]
        channels = self._output_channels(direction)
        out = np.empty((height, width, channels), dtype=np.uint8)
        # the output array and the PIL image made from it (Pillow keeps RGB as 4 bytes per pixel)
        reserved = out.nbytes + height * width * (4 if channels == 3 else 1)
        self._translate_by_tiles(direction, resolve_precision(precision, self.device), (height, width),
                                 per_image, self._free_memory() - reserved,
                                 lambda plan, pads: array_reader(pixels, pads, plan, self.device),
                                 array_sink(out))
        return Image.fromarray(out[:, :, 0] if channels == 1 else out)

    def _translate_by_tiles(self, direction: str, precision: ResolvedPrecision, size: tuple[int, int],
                            per_image: int, free: int,
                            reader: Callable[[TilePlan, tuple[int, int, int, int]], Reader],
                            sink: Callable[[tuple[int, int, int, int]], Sink]) -> None:
        """Translate one image of ``size`` by tiles within ``free`` bytes; ``reader`` and ``sink`` give
        access to its input and output."""
        generator, multiple = self.generator(direction), self.multiple(direction)
        self._memory_format(direction, precision)  # tiles convert to the weights' format in the first conv
        height, width = size
        free = int(free * TILE_HEADROOM)
        pads = pad_amounts(height, width, multiple)
        padded_h, padded_w = height + pads[2] + pads[3], width + pads[0] + pads[1]
        overlap = default_overlap(multiple) if self.tiling.overlap is None else self.tiling.overlap
        minimum = (2 * overlap + multiple + multiple - 1) // multiple * multiple
        engine, channels = self.tile_engine, self._output_channels(direction)

        def side(room: int, passes: ResolvedPrecision) -> int:
            return self.tiling.tile or largest_tile(self.config, room, width=padded_w, height=padded_h,
                                                    channels=channels, multiple=multiple, minimum=minimum,
                                                    precision=passes)
        tile = side(free, precision)
        if engine is not None:  # the engine's own memory (its runtime, a compiled copy) comes off the budget
            overhead = engine.overhead_bytes(generator)
            def count(tile_side: int) -> int:
                return plan_tiles(padded_h, padded_w, tile=tile_side, overlap=overlap, align=multiple).count

            try:  # the engine's passes stay under the fp32 estimate (TileEngine), bf16 ones too
                engine_tile = side(free - overhead, "fp32")
            except MemoryBudgetError:
                engine_tile = 0
            # smaller tiles mean more tiles (overlap computed again): worth it only when they stay few
            if not engine_tile or count(engine_tile) > 1.25 * count(tile):
                logger.info("%s would take ~%s of the memory budget and shrink the tiles: the PyTorch tiler "
                            "runs them", engine.name, format_bytes(overhead))
                engine = None
            else:
                free, tile = free - overhead, engine_tile
        plan = plan_tiles(padded_h, padded_w, tile=tile, overlap=overlap, align=multiple)
        factor = self.tiling.thumbnail_factor
        if self.tiling.statistics == "thumbnail" and factor is None:
            factor = 2  # the smallest downscaling whose pass fits, down to a thumbnail of MIN_THUMBNAIL px
            while (forward_bytes(self.config, padded_h // factor + multiple, padded_w // factor + multiple,
                                 precision=precision) > free
                   and max(padded_h, padded_w) // (factor + 1) >= MIN_THUMBNAIL):
                factor += 1
        elif self.tiling.statistics == "tile":
            factor = None
        logger.info("%dx%d needs ~%s in one forward pass, %s is left of the memory budget: %d tile(s) of %d px "
                    "(overlap %d)%s, run by %s", width, height, format_bytes(per_image), format_bytes(free),
                    plan.count, tile, overlap, f", statistics from a 1/{factor} thumbnail" if factor else "",
                    engine.name if engine else f"the PyTorch tiler ({precision})")
        compile_tiles = None if engine is None else (lambda net: engine.compile(net, precision))
        with _eval_mode(generator), torch.no_grad(), autocast(self.device, precision):
            translate_tiled(generator, reader(plan, pads), plan, sink(pads), multiple=multiple,
                            thumbnail_factor=factor, compile_tiles=compile_tiles)

    def __repr__(self) -> str:
        return f"Translator({describe_config(self.config)}, directions={self.directions}, device={self.device})"
