"""Pixel transforms of the dataset (the official preprocessing), shared with inference's conversions.

Images are uint8 HWC arrays until ``to_float_chw`` makes the float32 CHW tensor in [-1, 1] that every
network of the library takes; the resizes use PIL's bicubic filter as the official code does.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SIZE_MULTIPLE_NONE = 4  # preprocess="none" rounds sizes to a multiple of 4, as the official code does


def to_float_chw(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC (array or tensor) -> float32 CHW in [-1, 1]."""
    if isinstance(pixels, np.ndarray):
        pixels = np.ascontiguousarray(pixels)
        if not pixels.flags.writeable:  # PIL and memory-mapped arrays are read-only; torch wants to own
            pixels = pixels.copy()
        pixels = torch.from_numpy(pixels)
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """The ``resize_and_crop`` resize (bicubic to size x size) as uint8 HWC; the cache stores exactly this."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def scale_width(image: Image.Image, width: int, min_height: int) -> np.ndarray:
    """Width to ``width`` keeping the aspect, height at least ``min_height`` (official ``__scale_width``)."""
    old_w, old_h = image.size
    if old_w != width or old_h < min_height:
        height = int(max(width * old_h / old_w, min_height))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def round_to_multiple(image: Image.Image, base: int = SIZE_MULTIPLE_NONE) -> np.ndarray:
    """Resize to the nearest multiple of ``base`` in each dimension (official ``__make_power_2``)."""
    old_w, old_h = image.size
    width, height = max(base, round(old_w / base) * base), max(base, round(old_h / base) * base)
    if (width, height) != (old_w, old_h):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def crop_and_flip(pixels: np.ndarray, top: int, left: int, size: int | None, flip: bool) -> torch.Tensor:
    """uint8 HWC tensor of the ``size``-square window at (top, left) (all if None), mirrored if ``flip``."""
    if size is not None:
        pixels = pixels[top : top + size, left : left + size]
    # one compact copy of the window (PIL and memory-mapped arrays are read-only); torch mirrors it
    # several times faster than numpy copies a negative-stride view
    window = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))
    return window.flip(1) if flip else window
