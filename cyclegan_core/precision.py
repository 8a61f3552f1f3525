"""Numeric precision and memory format of a forward pass: what ``"auto"`` means on a device, and its
autocast context.

``auto`` is bf16 autocast on CUDA. On the CPU it is what was measured on this machine
(``cyclegan_core.inference.backends``: the fastest path whose output stays within 40 dB of fp32), which the entry
point measures once and passes down as ``cpu_auto``; without a measurement it is fp32, the official
computation. No list of CPU flags decides it: bf16 was 0.64x fp32 on one AVX512-BF16 Xeon and 1.9x on an
AVX512-BF16 EPYC (benchmarks/README.md). fp16 and bf16 run under ``torch.autocast``; fp32 disables
autocast (also inside an enclosing autocast region). On CPU, bf16 runs channels_last; fp32 on CPU stays
NCHW (channels_last made it slower).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal, get_args

import torch

from cyclegan_core.config import Precision

PRECISIONS: tuple[str, ...] = get_args(Precision)
ResolvedPrecision = Literal["fp32", "bf16", "fp16"]


def resolve_precision(precision: Precision | str, device: torch.device, *,
                      cpu_auto: ResolvedPrecision = "fp32") -> ResolvedPrecision:
    """``auto`` is bf16 on CUDA and ``cpu_auto`` (the measured choice; fp32 when nothing was measured)
    elsewhere; explicit choices are kept; unknown names are refused, naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else cpu_auto
    return precision  # type: ignore[return-value]


def channels_last_on(device: torch.device, precision: ResolvedPrecision) -> bool:
    """Whether a CPU forward pass at ``precision`` runs in channels_last (NHWC): bf16 only."""
    return device.type == "cpu" and precision == "bf16"


def autocast(device: torch.device, precision: ResolvedPrecision) -> AbstractContextManager[None]:
    """The autocast context of a resolved precision on ``device`` (disabled for fp32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")
