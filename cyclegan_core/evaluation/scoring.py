"""Scoring a Translator on a dataset's test splits: paired metrics, FID/KID, cycle error, sample grids.

For each direction (AtoB: testA -> G_AB -> G_BA, BtoA: testB -> G_BA -> G_AB), at each test image's
native size (the translator pads to its size multiple and crops back), in fp32:

- ``cycle_l1_A`` / ``cycle_l1_B``: mean |G_BA(G_AB(a)) - a| (and the B analogue), [-1, 1] units;
- paired metrics when ``testA_ref/`` (``testB_ref/``) holds the ground-truth translation under the same
  file names: ``psnr_AtoB``, ``ssim_AtoB``, ``l1_AtoB``, the identity baseline ``*_identity_AtoB``
  (the untranslated input against the reference) and ``psnr_gain_AtoB``;
- ``fid_AtoB`` / ``kid_AtoB`` (+ ``kid_AtoB_std``): G_AB(testA) against the real testB (and BtoA),
  with Inception-v3 pool3 features (conventions in ``cyclegan_core.evaluation.metrics`` and
  ``cyclegan_core.evaluation.inception``);
- ``n_images_A`` / ``n_images_B``: how many test images were scored.

Every per-image value is averaged over the images of its split. Grids: rows of input | translated |
reconstructed for the first ``grid_images`` test images of a direction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cyclegan_core.data.images import InvalidImage, decode_image, list_images
from cyclegan_core.evaluation.metrics import (
    fid_from_features,
    kid_from_features,
    l1,
    psnr,
    ssim,
    to_unit_range,
)
from cyclegan_core.inference.pretrained import DIRECTIONS
from cyclegan_core.inference.translator import Translator, pil_to_tensor

if TYPE_CHECKING:
    from cyclegan_core.evaluation.inception import InceptionFeatureExtractor

logger = logging.getLogger(__name__)

DOMAINS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}  # direction -> (source domain, target domain)
OPPOSITE = {"AtoB": "BtoA", "BtoA": "AtoB"}
GRID_PADDING = 2  # white pixels around and between the tiles of a sample grid (torchvision's make_grid layout)
GridRow = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# --- test images ---------------------------------------------------------------------------------


def _load_images(paths: list[Path]) -> Iterator[tuple[Path, torch.Tensor]]:
    """Decode each path to a 3 x H x W tensor in [-1, 1]; unreadable files are logged and skipped."""
    for path in paths:
        try:
            yield path, pil_to_tensor(decode_image(path))
        except InvalidImage as exc:
            logger.warning("skipping unreadable test image: %s", exc)


def same_size_batches(paths: list[Path], batch_size: int) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Batches of up to ``batch_size`` consecutive images of one size, in file order."""
    names: list[Path] = []
    tensors: list[torch.Tensor] = []
    for path, tensor in _load_images(paths):
        if tensors and (len(tensors) == batch_size or tensor.shape != tensors[0].shape):
            yield names, torch.stack(tensors)
            names, tensors = [], []
        names.append(path)
        tensors.append(tensor)
    if tensors:
        yield names, torch.stack(tensors)


def load_references(names: list[Path], ref_dir: Path, like: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
    """Indices of the batch with a usable reference (same file name and size) and those references."""
    indices, refs = [], []
    for index, name in enumerate(names):
        ref_path = ref_dir / name.name
        try:
            ref = pil_to_tensor(decode_image(ref_path))
        except InvalidImage as exc:
            logger.warning("no usable reference for %s: %s", name.name, exc)
            continue
        if ref.shape != like.shape[1:]:
            logger.warning("reference %s is %s, its input %s is %s: not compared", ref_path, tuple(ref.shape),
                           name, tuple(like.shape[1:]))
            continue
        indices.append(index)
        refs.append(ref)
    return indices, (torch.stack(refs) if refs else None)


def split_paths(data_root: Path, *, max_images: int | None = None) -> dict[str, list[Path]]:
    """The test images of each domain (at most ``max_images``); a missing or empty split is a ValueError."""
    paths = {}
    for domain in ("A", "B"):
        folder = data_root / f"test{domain}"
        found = list_images(folder) if folder.is_dir() else []
        if not found:
            raise ValueError(f"{folder} holds no test images: evaluation needs test{domain}/ with images")
        paths[domain] = found[:max_images]
    return paths


# --- one direction -------------------------------------------------------------------------------


@dataclass
class DirectionResult:
    """Per-image values of one direction (source -> translated -> reconstructed)."""

    n_images: int = 0
    cycle_l1: list[torch.Tensor] = field(default_factory=list)
    paired: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    source_features: list[torch.Tensor] = field(default_factory=list)
    translated_features: list[torch.Tensor] = field(default_factory=list)
    grid_rows: list[GridRow] = field(default_factory=list)


def run_direction(translator: Translator, direction: str, paths: list[Path], *, ref_dir: Path | None,
                  extractor: InceptionFeatureExtractor | None, batch_size: int = 8,
                  grid_images: int = 8) -> DirectionResult:
    """Translate ``paths`` in ``direction``, reconstruct with the opposite one and collect per-image values."""
    result = DirectionResult()
    device = translator.device
    for names, source in tqdm(same_size_batches(paths, batch_size), desc=f"evaluate {direction}", unit="batch",
                              total=-(-len(paths) // batch_size), leave=False):
        source = source.to(device)
        # fp32 even on CUDA: metrics should not move with the autocast dtype
        translated = translator.translate_tensor(source, direction=direction, batch_size=batch_size,
                                                 precision="fp32")
        reconstructed = translator.translate_tensor(translated, direction=OPPOSITE[direction],
                                                    batch_size=batch_size, precision="fp32")
        result.n_images += len(names)
        result.cycle_l1.append(l1(reconstructed, source).cpu())
        if ref_dir is not None:
            indices, refs = load_references(names, ref_dir, source)
            if refs is not None:
                refs, picked = refs.to(device), torch.tensor(indices, device=device)
                for infix, images in (("", translated[picked]), ("_identity", source[picked])):
                    for metric, fn in (("psnr", psnr), ("ssim", ssim), ("l1", l1)):
                        result.paired.setdefault(metric + infix, []).append(fn(images, refs).cpu())
        if extractor is not None:
            result.source_features.append(extractor(source).cpu())
            result.translated_features.append(extractor(translated).cpu())
        for row in zip(source, translated, reconstructed):
            if len(result.grid_rows) == grid_images:
                break
            result.grid_rows.append((row[0].cpu(), row[1].cpu(), row[2].cpu()))
    return result


def _mean(values: list[torch.Tensor]) -> float:
    return float(torch.cat(values).double().mean())


def direction_metrics(direction: str, result: DirectionResult, real_target_features: list[torch.Tensor], *,
                      extractor_reason: str, kid_subsets: int, kid_subset_size: int,
                      metrics: dict[str, float], skipped: dict[str, str]) -> None:
    """Add ``direction``'s metrics to ``metrics`` (and what could not be computed, with why, to ``skipped``)."""
    source, target = DOMAINS[direction]
    metrics[f"n_images_{source}"] = float(result.n_images)
    metrics[f"cycle_l1_{source}"] = _mean(result.cycle_l1)
    if result.paired:
        for name, values in result.paired.items():
            metrics[f"{name}_{direction}"] = _mean(values)
        metrics[f"psnr_gain_{direction}"] = metrics[f"psnr_{direction}"] - metrics[f"psnr_identity_{direction}"]
    fid_key, kid_key = f"fid_{direction}", f"kid_{direction}"
    if extractor_reason:
        skipped[fid_key] = skipped[kid_key] = extractor_reason
        return
    fake, real = torch.cat(result.translated_features), torch.cat(real_target_features)
    if min(len(fake), len(real)) < 2:
        skipped[fid_key] = skipped[kid_key] = (
            f"needs at least 2 images per set, have {len(fake)} translated and {len(real)} real test{target}"
        )
        return
    metrics[fid_key] = fid_from_features(fake, real)
    metrics[kid_key], metrics[f"{kid_key}_std"] = kid_from_features(
        fake, real, subsets=kid_subsets, subset_size=kid_subset_size
    )


def sample_grid(rows: list[GridRow]) -> Image.Image:
    """Rows of input | translated | reconstructed as one image (2 px white padding, torchvision layout).

    Rows of another size than the first are resized (bilinear) to it, for display only.
    """
    height, width = rows[0][0].shape[-2:]
    pad, columns = GRID_PADDING, 3
    grid = torch.ones(3, pad + len(rows) * (height + pad), pad + columns * (width + pad))
    for index, image in enumerate(image for row in rows for image in row):
        tile = to_unit_range(image)
        if tile.shape[-2:] != (height, width):
            tile = F.interpolate(tile[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        grid[:, top : top + height, left : left + width] = tile
    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


# --- both directions -----------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Metrics of both directions, what was skipped (metric -> why), and a sample grid per direction."""

    metrics: dict[str, float]
    skipped: dict[str, str]
    grids: dict[str, Image.Image]


def evaluate_translator(
    translator: Translator, data_root: Path, *, extractor: InceptionFeatureExtractor | None,
    extractor_reason: str = "", max_images: int | None = None, batch_size: int = 8, grid_images: int = 8,
    kid_subsets: int = 100, kid_subset_size: int = 1000,
) -> Evaluation:
    """Score both directions of ``translator`` on ``data_root``'s test splits (see module docstring).

    ``extractor`` None skips FID/KID with ``extractor_reason``. Raises ``ValueError`` for a translator
    without both RGB generators, a missing or empty test split, or a split with no readable image.
    """
    data_root = Path(data_root)
    cfg = translator.config
    if translator.directions != DIRECTIONS:
        raise ValueError(f"evaluation needs both generators (G_AB and G_BA); {translator} has {translator.directions}")
    if cfg.input_nc != 3 or cfg.output_nc != 3:
        raise ValueError(f"evaluation needs RGB generators, the model has input_nc={cfg.input_nc}, "
                         f"output_nc={cfg.output_nc}")
    paths = split_paths(data_root, max_images=max_images)
    results: dict[str, DirectionResult] = {}
    for direction, (source, _) in DOMAINS.items():
        ref_dir = data_root / f"test{source}_ref"
        results[direction] = run_direction(translator, direction, paths[source],
                                           ref_dir=ref_dir if ref_dir.is_dir() else None, extractor=extractor,
                                           batch_size=batch_size, grid_images=grid_images)
        if results[direction].n_images == 0:
            raise ValueError(f"no readable image in {data_root / f'test{source}'} (see the warnings above)")
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for direction, (source, _) in DOMAINS.items():
        direction_metrics(direction, results[direction], results[OPPOSITE[direction]].source_features,
                          extractor_reason=extractor_reason, kid_subsets=kid_subsets,
                          kid_subset_size=kid_subset_size, metrics=metrics, skipped=skipped)
        if not results[direction].paired and (data_root / f"test{source}_ref").is_dir():
            skipped[f"psnr_{direction}"] = f"no test{source}_ref/ image matches a test{source}/ image by name and size"
    grids = {direction: sample_grid(result.grid_rows) for direction, result in results.items()}
    return Evaluation(metrics=metrics, skipped=skipped, grids=grids)
