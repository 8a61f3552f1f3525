"""Memory of inference: the budget a translation may use, and the peak a generator's forward pass needs.

A budget is the most memory the process should hold while translating: resident memory (RSS) on
CPU, memory allocated by torch on CUDA. What the process already holds counts against it, and
translation gets the rest. Its default is what the process holds plus half of what the machine has
available (``MemAvailable``; free device memory on CUDA) when the translation starts.

``forward_bytes`` is the peak extra memory of one forward pass without autograd, per pixel of the
(padded) input and linear in ``ngf``, calibrated from the peak RSS of subprocesses on CPU (see
benchmarks/README.md "Tiled inference"): measured peaks in fp32 were 14-17 bytes per pixel per ngf for
the ResNet generators, 7-10 for the U-Nets and 54-58 for the AdaLIN generator (which keeps instance- and
layer-normalised copies of its decoder activations). A bf16 pass on CPU (autocast, channels_last) holds
more for the ResNets, up to 27 bytes per pixel per ngf: instance norm runs in fp32 between bf16
convolutions, so each block keeps both. The coefficients below round these up.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cyclegan_core.config import ModelConfig
from cyclegan_core.precision import ResolvedPrecision

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

# bytes per input pixel: ngf * slope + intercept (the intercept covers the 3-channel input, its padded
# copy and the output); bf16 differs from fp32 for the ResNets only (U-Nets measured 4, AdaLIN 53 in bf16)
_PER_PIXEL = {"resnet": (18, 48), "unet": (11, 48), "resnet_unet_adalin": (62, 48)}
_PER_PIXEL_BF16 = {**_PER_PIXEL, "resnet": (30, 48)}
_FIXED_BYTES = 64 * 2**20  # allocator and kernel workspaces, measured once per pass

DEFAULT_FRACTION = 0.5
# the share of what is left that tiles may plan for: the rest absorbs allocator fragmentation (glibc keeps
# freed blocks below its adaptive mmap threshold) and small temporaries the estimate does not see
TILE_HEADROOM = 0.8


class MemoryBudgetError(ValueError):
    """The budget leaves too little memory to translate even in the smallest tiles."""


def parse_bytes(text: str) -> int:
    """``"2GiB"``, ``"1.5 GB"``, ``"512MiB"``, ``"800m"`` or a plain number of bytes, as bytes."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"memory size {text!r} is not a number with an optional unit "
                         "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 2GiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"memory size {text!r} must be at least one byte")
    return value


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"


def _status_bytes(field: str, path: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def used_bytes(device: torch.device) -> int:
    """What the process holds now: RSS on CPU (0 where /proc is missing), allocated memory on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _status_bytes("VmRSS", "/proc/self/status") or 0


def available_bytes(device: torch.device) -> int:
    """Free memory the machine could give: ``MemAvailable`` on CPU, free device memory on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = _status_bytes("MemAvailable", "/proc/meminfo")
    if available is None:  # not Linux: fall back to a conservative fixed figure
        return 4 * 2**30
    return available


def default_budget(device: torch.device) -> int:
    """What the process holds now plus ``DEFAULT_FRACTION`` of what is available."""
    return used_bytes(device) + int(DEFAULT_FRACTION * available_bytes(device))


def forward_bytes(config: ModelConfig, height: int, width: int, *, batch: int = 1,
                  precision: ResolvedPrecision = "fp32") -> int:
    """Peak extra memory of a forward pass of ``config``'s generator at ``precision`` on a ``batch`` x C x H x W
    input (fp16 as bf16)."""
    family = ("resnet_unet_adalin" if config.generator == "resnet_unet_adalin"
              else "unet" if config.generator.startswith("unet") else "resnet")
    slope, intercept = (_PER_PIXEL if precision == "fp32" else _PER_PIXEL_BF16)[family]
    return batch * height * width * (slope * config.ngf + intercept) + _FIXED_BYTES


def band_bytes(tile: int, width: int, channels: int) -> int:
    """Two row bands of float accumulators (output channels + weight) of ``run_tiled`` and the finished
    rows' uint8 copy the sink writes."""
    return (2 * (channels + 1) * 4 + channels) * tile * width


def largest_tile(config: ModelConfig, free: int, *, width: int, height: int, channels: int, multiple: int,
                 minimum: int, precision: ResolvedPrecision = "fp32") -> int:
    """The largest square tile side (a multiple of ``multiple``, at least ``minimum``) whose forward pass
    at ``precision`` and band accumulators fit in ``free`` bytes; ``MemoryBudgetError`` when not even
    ``minimum`` fits."""
    def needs(side: int) -> int:
        return forward_bytes(config, side, side, precision=precision) + band_bytes(side, width, channels)

    cap = max(height, width) + multiple
    tile = max(multiple, cap // multiple * multiple)
    while tile > minimum and needs(tile) > free:
        tile -= multiple
    needed = needs(minimum)
    if tile <= minimum and needed > free:
        raise MemoryBudgetError(f"{format_bytes(free)} of the memory budget is left for tiles, and the "
                                f"smallest tile ({minimum} px) of {config.generator} ngf={config.ngf} on a "
                                f"{width} px wide image needs {format_bytes(needed)}; raise the budget")
    return max(tile, minimum)
