"""Inference: translate tensors, PIL images, files and folders with a trained generator.

- ``translate_tensor``: any H x W. Inputs are reflection-padded (symmetrically) up to the generator's
  size multiple and the output is cropped back, so odd sizes come out at their own size.
- ``translate_images``: PIL images in, PIL images out (same order); images of equal size are batched.
- ``translate_path``: a model path and an image file or folder. A folder is read flat (the images
  directly inside it, as ``cyclegan_core.images.list_images`` lists them). Each output is a PNG named
  after its input (``photo.jpg`` -> ``photo.png``; if inputs share a stem, a PNG input keeps the short
  name and the others keep their suffix: ``photo.jpg.png``). Unreadable inputs are skipped and
  reported. Outputs never overwrite an input: the output folder must differ from the input folder,
  and an output file from the input file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, Field
from torch import nn
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path
from cyclegan_core.export import load_generator
from cyclegan_core.images import IMAGE_EXTENSIONS, InvalidImage, decode_image, list_images
from cyclegan_core.networks import size_multiple

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class SkippedImage(BaseModel):
    path: str
    reason: str


class TranslateSummary(BaseModel):
    """What ``translate_path`` did."""

    model: str
    direction: str
    translated: int = 0
    skipped: list[SkippedImage] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    seconds: float = 0.0


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, restoring the caller's mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad H and W up to ``multiple`` (reflection; replicate where the image is too small to reflect)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom
    if not any(pads):
        return x, pads
    reflectable = max(pads[:2]) < width and max(pads[2:]) < height
    return F.pad(x, pads, mode="reflect" if reflectable else "replicate"), pads


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def translate_tensor(generator: nn.Module, images: torch.Tensor, *, multiple: int, batch_size: int = 8,
                     precision: str = "auto") -> torch.Tensor:
    """Translate an N x C x H x W (or C x H x W) float batch in [-1, 1]; returns the same layout and device.

    Runs on the generator's device in eval mode without autograd; ``precision="auto"`` means bf16
    autocast on CUDA and fp32 elsewhere. The output is float32 in [-1, 1].
    """
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be C x H x W or N x C x H x W, got shape {tuple(images.shape)}")
    if multiple < 1 or batch_size < 1:
        raise ValueError(f"multiple and batch_size must be >= 1, got {multiple} and {batch_size}")
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    device = _device_of(generator)
    height, width = batch.shape[-2:]
    outputs = []
    # no_grad rather than inference_mode: inference tensors cannot be modified in place later,
    # which would surprise callers that post-process the result.
    with _eval_mode(generator), torch.no_grad(), _autocast(device, precision):
        for chunk in batch.split(batch_size):
            padded, (left, _, top, _) = _pad_to_multiple(chunk.to(device, torch.float32), multiple)
            out = generator(padded)[..., top:top + height, left:left + width]
            outputs.append(out.float().clamp_(-1.0, 1.0).to(images.device))
    result = torch.cat(outputs)
    return result[0] if single else result


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB (or L) PIL image as a C x H x W float tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """A C x H x W tensor in [-1, 1] (C = 1 or 3) as a PIL image."""
    array = tensor.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    array = array.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def translate_images(generator: nn.Module, pil_images: Sequence[Image.Image], *, multiple: int,
                     batch_size: int = 8, precision: str = "auto", mode: str = "RGB") -> list[Image.Image]:
    """Translate PIL images of any sizes; returns them in the input order.

    Images are converted to ``mode`` first: "RGB" for 3-channel generators, "L" for 1-channel ones.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    results: list[Image.Image | None] = [None] * len(pil_images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(pil_images):
        by_size.setdefault(image.size, []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            group = indices[start:start + batch_size]
            batch = torch.stack([pil_to_tensor(pil_images[i].convert(mode)) for i in group])
            out = translate_tensor(generator, batch, multiple=multiple, batch_size=batch_size, precision=precision)
            for i, tensor in zip(group, out, strict=True):
                results[i] = tensor_to_pil(tensor)
    return [image for image in results if image is not None]


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _plan_outputs(input_path: Path, output_path: Path) -> tuple[list[Path], dict[Path, Path]]:
    """The input files and, for each, where its translation goes; refuses plans that overwrite an input."""
    if input_path.is_file():
        if output_path.suffix.lower() in IMAGE_EXTENSIONS:
            target = output_path if output_path.suffix.lower() == ".png" else output_path.with_suffix(".png")
        else:
            target = output_path / f"{input_path.stem}.png"
        if _same_path(target, input_path):
            raise ValueError(f"output {target} is the input file {input_path}; refusing to overwrite an input")
        return [input_path], {input_path: target}
    if not input_path.is_dir():
        raise FileNotFoundError(f"input {input_path} does not exist")
    if output_path.exists() and (not output_path.is_dir() or _same_path(output_path, input_path)):
        raise ValueError(f"output {output_path} must be a folder different from the input folder {input_path}; "
                         "refusing to write translations over the inputs")
    inputs = list_images(input_path)
    targets: dict[Path, Path] = {}
    taken: set[str] = set()
    # PNG inputs claim their own name first, so only the other files of a shared stem get a longer name.
    for path in sorted(inputs, key=lambda p: p.suffix.lower() != ".png"):
        name = f"{path.stem}.png"
        if name in taken:
            name = f"{path.name}.png"
        taken.add(name)
        targets[path] = output_path / name
    resolved_inputs = {path.resolve() for path in inputs}
    clashes = [str(target) for target in targets.values() if target.resolve() in resolved_inputs]
    if clashes:
        raise ValueError(f"outputs {', '.join(clashes)} would overwrite inputs; choose another output folder")
    return inputs, targets


def _save_png(image: Image.Image, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        image.save(tmp, format="PNG")


def _decode_or_skip(path: Path, summary: TranslateSummary) -> Image.Image | None:
    try:
        return decode_image(path)
    except InvalidImage as exc:
        logger.warning("skipping %s: %s", path, exc.detail)
        summary.skipped.append(SkippedImage(path=str(path), reason=f"{exc.reason}: {exc.detail}"))
        return None


def translate_path(model_path: Path, input_path: Path, output_path: Path, *, direction: str = "AtoB",
                   batch_size: int = 8, device: str | torch.device | None = None,
                   precision: str = "auto") -> TranslateSummary:
    """Translate an image file or a folder of images (flat) and write PNGs under ``output_path``.

    ``model_path``: an exported model folder (``G_AB/`` + ``G_BA/``; ``direction`` picks one), one
    exported generator folder, or an official ``.pth`` (resnet_9blocks; ``direction`` is ignored).
    For a file input, ``output_path`` may be an image file name (a suffix other than .png is replaced
    by .png) or a folder. 1-channel generators get greyscale inputs and write greyscale PNGs.
    """
    started = time.perf_counter()
    model_path, input_path, output_path = Path(model_path), Path(input_path), Path(output_path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs, targets = _plan_outputs(input_path, output_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator, cfg = load_generator(model_path, device=device, direction=direction)
    if cfg.input_nc not in (1, 3):
        raise ValueError(f"{model_path}: image files can feed 1- or 3-channel generators, this one takes "
                         f"{cfg.input_nc} channels; use translate_tensor")
    multiple = size_multiple(cfg.generator)
    mode = "L" if cfg.input_nc == 1 else "RGB"
    summary = TranslateSummary(model=str(model_path), direction=direction)

    buckets: dict[tuple[int, int], list[tuple[Path, Image.Image]]] = {}

    def flush(size: tuple[int, int]) -> None:
        items = buckets.pop(size)
        translated = translate_images(generator, [image for _, image in items], multiple=multiple,
                                      batch_size=batch_size, precision=precision, mode=mode)
        for (source, _), image in zip(items, translated, strict=True):
            _save_png(image, targets[source])
            summary.outputs.append(str(targets[source]))
        summary.translated += len(items)

    with tqdm(total=len(inputs), desc="translate", unit="img", disable=len(inputs) < 2) as progress:
        for path in inputs:
            image = _decode_or_skip(path, summary)
            if image is None:
                progress.update(1)
                continue
            buckets.setdefault(image.size, []).append((path, image))
            if len(buckets[image.size]) >= batch_size:
                flush(image.size)
                progress.update(batch_size)
        for size in list(buckets):
            count = len(buckets[size])
            flush(size)
            progress.update(count)
    summary.seconds = round(time.perf_counter() - started, 3)
    logger.info("translated %d image(s) to %s, skipped %d, in %.1fs", summary.translated, output_path,
                len(summary.skipped), summary.seconds)
    return summary
