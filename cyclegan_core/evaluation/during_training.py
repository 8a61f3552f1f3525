"""Evaluation during training: score a training model's generators in memory, and the labelled sample grid.

``score_model`` runs ``evaluation.evaluate_translator`` (the code of the final evaluation) on a
Translator that shares the model's generators (no copy, nothing written): eval mode for the passes,
each net's train mode back afterwards, and the global RNG states restored, so a run that evaluates
trains bit-for-bit as one that does not. ``sample_rows`` translates a fixed set of held-out images and
``labelled_grid`` lays them out as input | translated | reconstructed | reference, under column labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from cyclegan_core.data.images import InvalidImage, decode_image
from cyclegan_core.evaluation.scoring import DOMAINS, OPPOSITE, Evaluation, evaluate_translator, split_paths
from cyclegan_core.inference.translator import Translator, pil_to_tensor, tensor_to_pil
from cyclegan_core.training.model import CycleGAN
from cyclegan_core.training.rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from cyclegan_core.evaluation.inception import InceptionFeatureExtractor

COLUMNS = ("input", "translated", "reconstructed", "reference")
LABEL_HEIGHT = 22
PADDING = 4


def model_translator(model: CycleGAN) -> Translator:
    """A Translator on the model's own generators (the same parameters, not a copy)."""
    return Translator(model.G_AB, model.G_BA, model.model_cfg)


def score_model(model: CycleGAN, data_root: Path, *, max_images: int, batch_size: int = 8,
                extractor: InceptionFeatureExtractor | None = None, extractor_reason: str = "",
                kid_subsets: int = 100, kid_subset_size: int = 1000) -> Evaluation:
    """``evaluate_translator`` on the first ``max_images`` test images of each domain, leaving the
    model's train/eval modes and the global RNG states as they were."""
    state = capture_rng_state()
    try:
        reason = extractor_reason or ("no Inception feature extractor" if extractor is None else "")
        return evaluate_translator(model_translator(model), data_root, extractor=extractor,
                                   extractor_reason=reason, max_images=max_images,
                                   batch_size=batch_size, grid_images=1, kid_subsets=kid_subsets,
                                   kid_subset_size=kid_subset_size)
    finally:
        restore_rng_state(state)


SampleRow = list[Image.Image | None]


def sample_rows(
    translator: Translator, data_root: Path, direction: str, *, count: int
) -> tuple[list[str], list[SampleRow]]:
    """The column labels and one row per image (the first ``count`` test images of the direction's
    source domain): input, translated, reconstructed and, when ``test<source>_ref/`` exists, the
    reference of the same name (None where it has none)."""
    source, _ = DOMAINS[direction]
    ref_dir = data_root / f"test{source}_ref"
    with_reference = ref_dir.is_dir()
    state = capture_rng_state()
    rows: list[SampleRow] = []
    try:
        for path in split_paths(data_root, max_images=count)[source]:
            try:
                image = decode_image(path)
            except InvalidImage:
                continue
            translated = translator.translate_tensor(pil_to_tensor(image), direction=direction, precision="fp32")
            reconstructed = translator.translate_tensor(translated, direction=OPPOSITE[direction], precision="fp32")
            row: SampleRow = [image, tensor_to_pil(translated), tensor_to_pil(reconstructed)]
            if with_reference:
                try:
                    row.append(decode_image(ref_dir / path.name))
                except InvalidImage:
                    row.append(None)
            rows.append(row)
    finally:
        restore_rng_state(state)
    return list(COLUMNS[: 4 if with_reference else 3]), rows


def fit_tile(image: Image.Image, tile: int) -> Image.Image:
    """``image`` scaled to fit a ``tile`` x ``tile`` square (aspect kept; nearest when enlarging a
    small image so its pixels stay visible), centred on white."""
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    square = Image.new("RGB", (tile, tile), "white")
    square.paste(image.convert("RGB").resize(size, resample), ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return square


def labelled_grid(labels: Sequence[str], rows: Sequence[SampleRow], *, tile: int = 160) -> Image.Image:
    """Rows of images under one label per column, each image fit into a ``tile`` px square; a missing
    image (None) is a grey square. Raises ValueError for no rows or a row of another width."""
    if not rows:
        raise ValueError("a sample grid needs at least one row")
    if any(len(row) != len(labels) for row in rows):
        raise ValueError(f"every sample row needs {len(labels)} images ({', '.join(labels)})")
    step = tile + PADDING
    grid = Image.new("RGB", (PADDING + step * len(labels), LABEL_HEIGHT + PADDING + step * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=14)
    for column, label in enumerate(labels):
        left = PADDING + step * column
        width = draw.textlength(label, font=font)
        draw.text((left + (tile - width) / 2, 3), label, fill="black", font=font)
        for index, row in enumerate(rows):
            cell = row[column]
            top = LABEL_HEIGHT + PADDING + step * index
            grid.paste(fit_tile(cell, tile) if cell is not None else Image.new("RGB", (tile, tile), "#bbbbbb"),
                       (left, top))
    return grid
