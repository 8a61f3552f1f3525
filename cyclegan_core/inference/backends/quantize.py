"""int8 generators: NNCF post-training quantization of the converted OpenVINO model.

Calibration images come from the model's own input domain; which ones is the caller's choice (``cyclegan
translate --precision int8``: the first ``CALIBRATION_IMAGES`` readable inputs of the job, or
``--calibration DIR``). Each is converted as ``Translator`` converts inputs, centre-cropped to at most
``CALIBRATION_SIDE`` px per side (activation ranges come from real pixels, not a resampled copy) and padded
to the size multiple. int8 is never a default: ``auto`` does not consider it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cyclegan_core.inference.backends.libraries import import_nncf, signal_stack_kept
from cyclegan_core.inference.translator import in_mode, pad_to_multiple, pil_to_tensor

CALIBRATION_IMAGES = 8
CALIBRATION_SIDE = 512


def calibration_arrays(images: Sequence[Image.Image], *, channels: int, multiple: int) -> list[np.ndarray]:
    """``images`` as 1 x C x H x W float32 arrays in [-1, 1], centre-cropped to ``CALIBRATION_SIDE``, padded."""
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for image in images:
        width, height = image.size
        crop_w, crop_h = min(width, CALIBRATION_SIDE), min(height, CALIBRATION_SIDE)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        tensor = pil_to_tensor(in_mode(image, mode).crop((left, top, left + crop_w, top + crop_h)))
        arrays.append(pad_to_multiple(tensor[None], multiple)[0].numpy())
    return arrays


def quantize(model: Any, arrays: Sequence[np.ndarray]) -> Any:
    """The OpenVINO ``model`` quantized to int8 by NNCF, calibrated on ``arrays`` (every one of them)."""
    if not arrays:
        raise ValueError("int8 quantization needs at least one calibration image")
    nncf = import_nncf()
    with signal_stack_kept():  # NNCF compiles models to collect statistics (libraries.py)
        return nncf.quantize(model, nncf.Dataset(list(arrays)), subset_size=len(arrays))
