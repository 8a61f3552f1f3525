"""The inference object: ``Translator`` owns the generators of a model and runs them on tensors or images.

Like a diffusers pipeline: ``Translator.from_pretrained(path)`` loads an exported model folder
(``G_AB/`` + ``G_BA/``), one exported generator folder or an official ``.pth`` (architecture inferred);
``Translator.from_checkpoint(path)`` rebuilds the two generators of a training checkpoint;
``save_pretrained(dest)`` writes the exported format. ``translate_tensor`` takes any H x W: inputs are
reflection-padded (symmetrically) up to the generator's size multiple and the output is cropped
back. Calling the translator on PIL images returns PIL images in the input order, batching images
of equal size. A single generator is held as the A->B one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch import nn

from cyclegan_core.checkpoint import CheckpointError, read_checkpoint
from cyclegan_core.config import ModelConfig
from cyclegan_core.data import to_float_chw
from cyclegan_core.networks import size_multiple
from cyclegan_core.networks.official import describe_config
from cyclegan_core.precision import autocast, resolve_precision
from cyclegan_core.pretrained import (
    CONFIG_FILE,
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


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad H and W up to ``multiple`` (reflection; replicate where the image is too small to reflect)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom
    if not any(pads):
        return x, pads
    reflectable = max(pads[:2]) < width and max(pads[2:]) < height
    return F.pad(x, pads, mode="reflect" if reflectable else "replicate"), pads


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

    def __init__(self, G_AB: nn.Module, G_BA: nn.Module | None, config: ModelConfig) -> None:
        self.config = config
        self._generators = {"AtoB": unwrap(G_AB)}
        if G_BA is not None:
            self._generators["BtoA"] = unwrap(G_BA)
        self.directions: tuple[str, ...] = tuple(self._generators)
        self._multiples = dict.fromkeys(self.directions, size_multiple(config.generator))
        parameter = next(self._generators["AtoB"].parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")

    # --- loading and saving -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None) -> Translator:
        """An exported model folder (``G_AB/`` + ``G_BA/``), one exported generator folder, or an official
        ``.pth`` whose architecture is inferred from its state dict. ``device`` None: CUDA if available."""
        path = Path(path)
        if path.is_dir() and (path / CONFIG_FILE).is_file():
            net, cfg = load_generator_folder(path)
            translator = cls(net, None, cfg)
        elif path.is_dir():
            missing = [f"{folder}/" for folder in DIRECTION_FOLDERS.values() if not (path / folder).is_dir()]
            if missing:
                raise GeneratorLoadError(f"{path} is neither an exported generator (no {CONFIG_FILE}) nor an "
                                         f"exported model (no {' or '.join(missing)})")
            g_ab, cfg = load_generator_folder(path / DIRECTION_FOLDERS["AtoB"])
            g_ba, cfg_ba = load_generator_folder(path / DIRECTION_FOLDERS["BtoA"])
            if cfg_ba != swapped_channels(cfg):
                raise GeneratorLoadError(f"{path}: G_BA/ ({describe_config(cfg_ba)}) is not the B->A twin of "
                                         f"G_AB/ ({describe_config(cfg)}); export the pair together")
            translator = cls(g_ab, g_ba, cfg)
        elif path.is_file():
            net, cfg = load_official_generator(path)
            translator = cls(net, None, cfg)
        else:
            raise GeneratorLoadError(f"{path} does not exist (expected an exported generator/model folder or a .pth)")
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

    # --- inference ----------------------------------------------------------------------------------
    def translate_tensor(self, images: torch.Tensor, *, direction: str = "AtoB", batch_size: int = 8,
                         precision: str = "auto") -> torch.Tensor:
        """Translate an N x C x H x W (or C x H x W) float batch in [-1, 1]; returns the same layout and device.

        Runs on the translator's device in eval mode without autograd; ``precision="auto"`` means bf16
        autocast on CUDA and fp32 elsewhere. The output is float32 in [-1, 1].
        """
        if images.dim() not in (3, 4):
            raise ValueError(f"images must be C x H x W or N x C x H x W, got shape {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator, multiple = self.generator(direction), self.multiple(direction)
        resolved = resolve_precision(precision, self.device)
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        height, width = batch.shape[-2:]
        outputs = []
        # no_grad rather than inference_mode: inference tensors cannot be modified in place later,
        # which would surprise callers that post-process the result.
        with _eval_mode(generator), torch.no_grad(), autocast(self.device, resolved):
            for chunk in batch.split(batch_size):
                padded, (left, _, top, _) = pad_to_multiple(chunk.to(self.device, torch.float32), multiple)
                out = generator(padded)[..., top:top + height, left:left + width]
                outputs.append(out.float().clamp_(-1.0, 1.0).to(images.device))
        result = torch.cat(outputs)
        return result[0] if single else result

    def __call__(self, images: Sequence[Image.Image], *, direction: str = "AtoB", batch_size: int = 8,
                 precision: str = "auto") -> list[Image.Image]:
        """Translate PIL images of any sizes; returns them in the input order.

        Images are converted to RGB for 3-channel generators and to L (greyscale) for 1-channel ones.
        """
        channels = self.input_channels(direction)
        if channels not in (1, 3):
            raise ValueError(f"PIL images can feed 1- or 3-channel generators; the {direction} generator takes "
                             f"{channels} channels: use translate_tensor")
        mode = "L" if channels == 1 else "RGB"
        results: list[Image.Image | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                group = indices[start:start + batch_size]
                batch = torch.stack([pil_to_tensor(images[i].convert(mode)) for i in group])
                out = self.translate_tensor(batch, direction=direction, batch_size=batch_size, precision=precision)
                for i, tensor in zip(group, out, strict=True):
                    results[i] = tensor_to_pil(tensor)
        return [image for image in results if image is not None]

    def __repr__(self) -> str:
        return f"Translator({describe_config(self.config)}, directions={self.directions}, device={self.device})"
