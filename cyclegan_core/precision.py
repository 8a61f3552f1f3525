"""Numeric precision and memory format of a forward pass: what ``"auto"`` means on a device, and its
autocast context.

``auto`` is bf16 autocast on CUDA and on CPUs with native bf16 matrix units (AMX-BF16: bf16 +
channels_last is ~2.5x fp32 there), fp32 on other CPUs, where bf16 is emulated
and slower than fp32. fp16 and bf16 run under ``torch.autocast``; fp32 disables autocast (also inside
an enclosing autocast region). On CPU, bf16 runs channels_last (1.5x bf16 NCHW on AMX); fp32 on CPU
stays NCHW (channels_last made it slower). Figures: benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import cache
from typing import Literal, get_args

import torch

from cyclegan_core.config import Precision

PRECISIONS: tuple[str, ...] = get_args(Precision)
ResolvedPrecision = Literal["fp32", "bf16", "fp16"]


@cache
def _host_capabilities() -> Mapping[str, object]:
    return dict(torch.cpu.get_capabilities())


def fast_cpu_bf16(capabilities: Mapping[str, object] | None = None) -> bool:
    """Whether this CPU runs bf16 convolutions faster than fp32: it has AMX-BF16 tiles.

    ``capabilities`` is ``torch.cpu.get_capabilities()``'s mapping (this host's when None). AVX512-BF16
    without AMX is not counted: measured on such a Xeon (benchmarks/README.md, "CPU inference"), bf16
    autocast ran at 0.64-0.67x of fp32, so it keeps fp32 (``precision="bf16"`` forces it).
    """
    caps = _host_capabilities() if capabilities is None else capabilities
    return bool(caps.get("amx_bf16"))


def resolve_precision(precision: Precision | str, device: torch.device, *,
                      cpu_bf16: bool | None = None) -> ResolvedPrecision:
    """``auto`` is bf16 on CUDA and on CPUs with fast bf16 (``cpu_bf16``; None: ``fast_cpu_bf16()``),
    fp32 elsewhere; explicit choices are kept; unknown names are refused."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        if device.type == "cpu" and (fast_cpu_bf16() if cpu_bf16 is None else cpu_bf16):
            return "bf16"
        return "fp32"
    return precision  # type: ignore[return-value]


def channels_last_on(device: torch.device, precision: ResolvedPrecision) -> bool:
    """Whether a CPU forward pass at ``precision`` runs in channels_last (NHWC): bf16 only."""
    return device.type == "cpu" and precision == "bf16"


def autocast(device: torch.device, precision: ResolvedPrecision) -> AbstractContextManager[None]:
    """The autocast context of a resolved precision on ``device`` (disabled for fp32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")
