"""Translate image files and folders with a ``Translator`` (or a model path it loads).

A folder is read flat (the images directly inside it, as ``cyclegan_core.images.list_images`` lists
them); images of one size are translated together in batches. Each output is a PNG named after its
input (``photo.jpg`` -> ``photo.png``; if inputs share a stem, a PNG input keeps the short name and
the others keep their suffix: ``photo.jpg.png``). Unreadable inputs are skipped and reported.
Outputs never overwrite an input: the output folder must differ from the input folder, and an
output file from the input file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel, Field
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path
from cyclegan_core.images import IMAGE_EXTENSIONS, InvalidImage, decode_image, list_images
from cyclegan_core.translator import Translator

logger = logging.getLogger(__name__)


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


def translate_path(model: Translator | str | Path, input_path: Path, output_path: Path, *,
                   direction: str = "AtoB", batch_size: int = 8, device: str | torch.device | None = None,
                   precision: str = "auto") -> TranslateSummary:
    """Translate an image file or a folder of images (flat) and write PNGs under ``output_path``.

    ``model``: a ``Translator``, or a path ``Translator.from_pretrained`` loads on ``device`` (an
    exported model folder, one exported generator folder, or an official ``.pth``). ``direction``
    picks the generator; a model of one generator uses it whatever the direction. For a file input,
    ``output_path`` may be an image file name (a suffix other than .png is replaced by .png) or a
    folder. 1-channel generators get greyscale inputs and write greyscale PNGs.
    """
    started = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs, targets = _plan_outputs(input_path, output_path)
    translator = model if isinstance(model, Translator) else Translator.from_pretrained(model, device=device)
    use = direction
    if direction not in translator.directions and len(translator.directions) == 1:
        use = translator.directions[0]
        logger.info("%s is one generator: translating with it (direction %s does not apply)", model, direction)
    translator.generator(use)  # an unknown direction fails before any file is read
    summary = TranslateSummary(model=str(model), direction=direction)

    buckets: dict[tuple[int, int], list[tuple[Path, Image.Image]]] = {}

    def flush(size: tuple[int, int]) -> None:
        items = buckets.pop(size)
        translated = translator([image for _, image in items], direction=use, batch_size=batch_size,
                                precision=precision)
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
