"""Numeric precision of a forward pass: what ``"auto"`` means on a device, and its autocast context.

``auto`` is bf16 autocast on CUDA and fp32 elsewhere (training and inference alike); fp16 and bf16
run under ``torch.autocast``; fp32 disables autocast (also inside an enclosing autocast region).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal, get_args

import torch

from cyclegan_core.config import Precision

PRECISIONS: tuple[str, ...] = get_args(Precision)
ResolvedPrecision = Literal["fp32", "bf16", "fp16"]


def resolve_precision(precision: Precision | str, device: torch.device) -> ResolvedPrecision:
    """``auto`` is bf16 on CUDA and fp32 elsewhere; explicit choices are kept; unknown names are refused."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision  # type: ignore[return-value]


def autocast(device: torch.device, precision: ResolvedPrecision) -> AbstractContextManager[None]:
    """The autocast context of a resolved precision on ``device`` (disabled for fp32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")
