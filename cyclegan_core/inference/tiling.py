"""Tiled inference: a generator run tile by tile on an image too large for one forward pass.

Geometry: the image, reflection-padded to the network's size multiple as a whole-image pass pads it,
is cut into overlapping tiles whose sides and offsets are multiples of that multiple, so each tile's
feature grids line up with the whole image's. Blending: a tile's output is weighted by a separable
window that is 1 inside the tile and falls as sin^2 across the central half of each overlap with a
neighbour (0 in the quarter nearest the tile's edge, where the tile's own padding corrupts it); the
windows of two neighbours sum to 1. Tiles are visited row by row and only one row band of float
accumulators is held; finished rows go to a sink, so the output can be uint8.

Instance norm: a tile normalises with its own statistics, not the image's, which shows as seams;
``translate_tiled`` gives every tile the whole image's statistics (``tile_statistics``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cyclegan_core.inference.tile_statistics import (
    capture_statistics,
    has_global_layers,
    with_frozen_statistics,
)

Reader = Callable[[int, int, int, int], torch.Tensor]  # padded rows y0:y1, cols x0:x1 -> 1 x C x h x w float
TileNet = Callable[[torch.Tensor], torch.Tensor]  # 1 x C x h x w tile -> 1 x C' x h x w output
Sink = Callable[[int, torch.Tensor], None]  # first padded row, C x h x padded-width rows in [-1, 1] (may change them)


# --- geometry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One tile's extent along an axis and its overlaps with the previous and next tile."""

    start: int
    stop: int
    lead: int = 0
    trail: int = 0


def spans(length: int, tile: int, overlap: int, align: int) -> list[Span]:
    """Spans of ``tile`` pixels covering [0, length): starts are multiples of ``align`` and neighbours
    overlap by at least ``overlap``. A length up to ``tile`` is one span of the whole length."""
    if min(length, tile, align) < 1 or overlap < 0:
        raise ValueError(f"length, tile and align must be >= 1 and overlap >= 0, got {length}, {tile}, "
                         f"{align}, {overlap}")
    if length <= tile:
        return [Span(0, length)]
    if tile % align or length % align or tile - overlap < align:
        raise ValueError(f"tile {tile} and length {length} must be multiples of {align}, and the tile must "
                         f"exceed the overlap {overlap} by at least {align}")
    count = math.ceil((length - overlap) / (tile - overlap))
    while True:
        last = length - tile
        starts = sorted({align * round(i * last / (count - 1) / align) for i in range(count)})
        if all(b - a <= tile - overlap for a, b in itertools.pairwise(starts)):
            break
        count += 1
    stops = [start + tile for start in starts]
    return [Span(start, stop, lead=stops[i - 1] - start if i else 0,
                 trail=stop - starts[i + 1] if i + 1 < len(starts) else 0)
            for i, (start, stop) in enumerate(zip(starts, stops, strict=True))]


@dataclass(frozen=True)
class TilePlan:
    """Tiles of a padded ``height`` x ``width`` image: every (row span, column span) pair."""

    height: int
    width: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, align: int) -> TilePlan:
    return TilePlan(height, width, tuple(spans(height, tile, overlap, align)),
                    tuple(spans(width, tile, overlap, align)))


# --- blending ------------------------------------------------------------------------------------


def ramp(n: int) -> torch.Tensor:
    """Rising weights across an overlap of ``n`` pixels: 0 in the first quarter, sin^2 across the middle
    half, 1 in the last quarter; ``ramp(n) + ramp(n).flip(0)`` is 1 everywhere."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(((t - 0.25) / 0.5).clamp(0.0, 1.0) * (math.pi / 2)) ** 2


def window_1d(span: Span) -> torch.Tensor:
    weights = torch.ones(span.stop - span.start, dtype=torch.float64)
    if span.lead:
        weights[:span.lead] *= ramp(span.lead)
    if span.trail:
        weights[-span.trail:] *= ramp(span.trail).flip(0)
    return weights


def window(row: Span, col: Span) -> torch.Tensor:
    """The 1 x h x w float32 blending weights of the tile (row, col)."""
    return torch.outer(window_1d(row), window_1d(col)).float()[None]


def run_tiled(net: TileNet, read: Reader, plan: TilePlan, write: Sink) -> None:
    """Run ``net`` on every tile of ``plan`` (``read`` gives a tile's input) and hand the blended output
    to ``write`` row band by row band, top to bottom; only two bands of accumulators are alive."""
    carry: tuple[torch.Tensor, torch.Tensor] | None = None  # accumulators of the rows shared with the next band
    for row in plan.rows:
        acc: torch.Tensor | None = None
        weight: torch.Tensor | None = None
        for col in plan.cols:
            out = net(read(row.start, row.stop, col.start, col.stop))[0].float().clamp_(-1.0, 1.0)
            win = window(row, col).to(out.device)
            if acc is None or weight is None:
                acc = torch.zeros(out.shape[0], row.stop - row.start, plan.width, device=out.device)
                weight = torch.zeros(1, row.stop - row.start, plan.width, device=out.device)
            acc[:, :, col.start:col.stop].addcmul_(out, win)
            weight[:, :, col.start:col.stop] += win
            del out
        assert acc is not None and weight is not None
        if carry is not None:
            acc[:, :row.lead] += carry[0]
            weight[:, :row.lead] += carry[1]
        done = acc.shape[1] - row.trail
        carry = (acc[:, done:].clone(), weight[:, done:].clone()) if row.trail else None
        write(row.start, acc[:, :done].div_(weight[:, :done]))  # in place: a band-sized temporary is ~30 MB


# --- reading tiles of a virtually padded image ----------------------------------------------------


def pad_amounts(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding up to ``multiple``, split evenly (the extra pixel after)."""
    pad_h, pad_w = -height % multiple, -width % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def reflectable(pads: tuple[int, int, int, int], height: int, width: int) -> bool:
    """Whether reflection padding is possible (each pad shorter than the side); else replicate."""
    return max(pads[:2]) < width and max(pads[2:]) < height


def padded_index(padded: int, before: int, length: int, *, reflect: bool) -> np.ndarray:
    """Source index of each padded position: reflection (as ``F.pad(mode="reflect")``) or replication."""
    index = np.arange(padded) - before
    if reflect:
        index = np.abs(index)
        return np.where(index >= length, 2 * (length - 1) - index, index)
    return index.clip(0, length - 1)


def tensor_reader(image: torch.Tensor, pads: tuple[int, int, int, int], plan: TilePlan,
                  device: torch.device) -> Reader:
    """Tiles of the padded ``image`` (C x H x W float) as 1 x C x h x w on ``device``."""
    reflect = reflectable(pads, image.shape[1], image.shape[2])
    rows = torch.from_numpy(padded_index(plan.height, pads[2], image.shape[1], reflect=reflect))
    cols = torch.from_numpy(padded_index(plan.width, pads[0], image.shape[2], reflect=reflect))

    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        tile = image.index_select(1, rows[y0:y1].to(image.device)).index_select(2, cols[x0:x1].to(image.device))
        return tile[None].to(device, torch.float32)

    return read


def array_reader(pixels: np.ndarray, pads: tuple[int, int, int, int], plan: TilePlan,
                 device: torch.device) -> Reader:
    """Tiles of the padded ``pixels`` (H x W x C uint8) as 1 x C x h x w float in [-1, 1] on ``device``,
    converted exactly as ``cyclegan_core.data.transforms.to_float_chw`` converts a whole image."""
    reflect = reflectable(pads, pixels.shape[0], pixels.shape[1])
    rows = padded_index(plan.height, pads[2], pixels.shape[0], reflect=reflect)
    cols = padded_index(plan.width, pads[0], pixels.shape[1], reflect=reflect)

    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        tile = torch.from_numpy(pixels[rows[y0:y1]][:, cols[x0:x1]])
        return tile.permute(2, 0, 1).float().div_(127.5).sub_(1.0)[None].to(device)

    return read


def tensor_sink(out: torch.Tensor) -> Callable[[tuple[int, int, int, int]], Sink]:
    """Write finished rows of the padded output into ``out`` (C x H x W float), cropping the padding."""
    def sink(pads: tuple[int, int, int, int]) -> Sink:
        left, _, top, _ = pads
        height, width = out.shape[1:]

        def write(first: int, rows: torch.Tensor) -> None:
            lo, hi = max(first, top), min(first + rows.shape[1], top + height)
            if hi > lo:
                out[:, lo - top:hi - top] = rows[:, lo - first:hi - first, left:left + width].to(out.device)
        return write
    return sink


def array_sink(out: np.ndarray) -> Callable[[tuple[int, int, int, int]], Sink]:
    """Write finished rows into ``out`` (H x W x C uint8), rounded as ``tensor_to_pil`` rounds."""
    def sink(pads: tuple[int, int, int, int]) -> Sink:
        left, _, top, _ = pads
        height, width = out.shape[:2]

        def write(first: int, rows: torch.Tensor) -> None:
            lo, hi = max(first, top), min(first + rows.shape[1], top + height)
            if hi > lo:
                block = rows[:, lo - first:hi - first, left:left + width]  # rounded in place: no float copies
                out[lo - top:hi - top] = (block.add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
                                          .permute(1, 2, 0).cpu().numpy())
        return write
    return sink


def thumbnail(read: Reader, plan: TilePlan, factor: int, *, band_rows: int) -> torch.Tensor:
    """The padded image box-averaged over ``factor`` x ``factor`` blocks (remainder rows and columns
    dropped), read ``band_rows`` thumbnail rows at a time: 1 x C x (height // factor) x (width // factor)."""
    height, width = plan.height // factor, plan.width // factor
    bands = []
    for top in range(0, height, band_rows):
        rows = min(band_rows, height - top)
        block = read(top * factor, (top + rows) * factor, 0, width * factor)
        bands.append(F.avg_pool2d(block, factor))
    return torch.cat(bands, dim=2)


# --- one tiled translation ------------------------------------------------------------------------


@torch.no_grad()
def translate_tiled(net: nn.Module, read: Reader, plan: TilePlan, write: Sink, *, multiple: int,
                    thumbnail_factor: int | None, band_rows: int = 64,
                    compile_tiles: Callable[[nn.Module], TileNet] | None = None) -> None:
    """Translate the image behind ``read`` tile by tile. ``thumbnail_factor``: gather the global layers'
    statistics from the image box-downscaled by this factor and use them in every tile; None: each tile
    normalises with its own statistics. ``compile_tiles`` turns the network (statistics frozen) into
    what runs the tiles (another runtime); None: the network itself."""
    if thumbnail_factor is not None and has_global_layers(net):
        small = thumbnail(read, plan, thumbnail_factor, band_rows=band_rows)
        pads = pad_amounts(small.shape[2], small.shape[3], multiple)
        small = F.pad(small, pads, mode="reflect" if reflectable(pads, *small.shape[2:]) else "replicate")
        net = with_frozen_statistics(net, capture_statistics(net, small))
        del small
    run_tiled(net if compile_tiles is None else compile_tiles(net), read, plan, write)


class TileEngine(Protocol):
    """Runs the tiles of a large image in another runtime: ``compile(net, precision)`` turns the generator
    (its global statistics frozen) into what ``run_tiled`` calls on each tile; ``overhead_bytes(net)`` is
    the memory that takes besides the tiles' own passes (the tiler leaves it out of the budget first). Its
    passes at any precision must stay under ``forward_bytes``' fp32 estimate, which plans them (OpenVINO's:
    at most 0.82 of it, benchmarks/README.md "Tiled inference")."""

    name: str

    def overhead_bytes(self, net: nn.Module) -> int: ...

    def compile(self, net: nn.Module, precision: str) -> TileNet: ...


@dataclass(frozen=True)
class Tiling:
    """How an image over the memory budget is tiled. ``tile`` None: the largest square tile the budget
    allows; ``overlap`` None: ``default_overlap``; ``statistics``: ``"thumbnail"`` gathers the global
    layers' statistics from a downscaled copy of the whole image, ``"tile"`` lets each tile use its own."""

    tile: int | None = None
    overlap: int | None = None
    statistics: Literal["thumbnail", "tile"] = "thumbnail"
    thumbnail_factor: int | None = None  # None: the smallest integer downscaling whose pass fits the budget

MIN_THUMBNAIL = 256  # px, long side: the budget may shrink the thumbnail no further


def default_overlap(multiple: int) -> int:
    """Overlap of neighbouring tiles: 128 px for the ResNets (multiple 4), at least one multiple for the
    U-Nets. With the whole image's statistics, resnet_9blocks tiles agree with the whole pass to
    59 dB PSNR at 64 px and 93 dB at 128 px (benchmarks/README.md "Tiled inference")."""
    return max(128, multiple)
