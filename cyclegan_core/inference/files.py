"""Translate image files and folders with a loaded model (``TranslatorLike``) or a model path it loads.

A folder is read flat (the images directly inside it, as ``cyclegan_core.data.images.list_images`` lists
them); images of one size are translated together in batches. Each output of a folder is a PNG named
after its input (``photo.jpg`` -> ``photo.png``; if inputs share a stem, a PNG input keeps the short
name and the others keep their suffix: ``photo.jpg.png``); a single file may be written to a file name
of any image extension, in that format. Unreadable inputs are skipped and reported. Outputs never
overwrite an input. ``plan_translation`` and ``check_device`` are the cheap checks (paths, device) a
caller runs before it fetches or loads a model; ``translate_path`` runs them first too.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel, Field
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from cyclegan_core.data.images import IMAGE_EXTENSIONS, InvalidImage, decode_image, list_images
from cyclegan_core.inference.backends import TranslatorLike, check_choice, load_translator
from cyclegan_core.inference.backends.quantize import CALIBRATION_IMAGES

logger = logging.getLogger(__name__)


class SkippedImage(BaseModel):
    path: str
    reason: str


class TranslateSummary(BaseModel):
    """What ``translate_path`` did."""

    model: str
    direction: str
    backend: str = Field("", description="what translated: backend, precision and why (TranslatorLike.describe)")
    translated: int = 0
    skipped: list[SkippedImage] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class DeviceError(ValueError):
    """The device asked for does not exist on this machine; the message says what to use instead."""


def check_device(device: str | torch.device | None, *, cuda_devices: int | None = None,
                 mps: bool | None = None) -> torch.device:
    """The ``torch.device`` to run on, refusing one this machine does not have (before any model load).

    ``None`` means CUDA when a GPU is visible, else the CPU. ``cuda_devices`` / ``mps`` default to
    what PyTorch sees here (parameters so the refusals can be checked on any machine).
    """
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if device is None:
        return torch.device("cuda" if cuda_devices else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device {str(device)!r} is not a device name: expected cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if cuda_devices == 0:
            raise DeviceError(f"device {device} is not available: PyTorch sees no CUDA GPU on this machine; "
                              "use cpu (or no device: CUDA when there is a GPU, else the CPU)")
        if resolved.index is not None and resolved.index >= cuda_devices:
            raise DeviceError(f"device {device} is not available: PyTorch sees {cuda_devices} CUDA GPU(s), "
                              f"cuda:0 to cuda:{cuda_devices - 1}")
    elif resolved.type == "mps":
        if not (torch.backends.mps.is_available() if mps is None else mps):
            raise DeviceError(f"device {device} is not available: PyTorch sees no Apple MPS device here; use cpu")
    elif resolved.type != "cpu":
        raise DeviceError(f"device {device} is not supported for translation: expected cpu, cuda, cuda:N or mps")
    return resolved


@dataclass(frozen=True)
class TranslationPlan:
    """The input files and, for each, the file its translation is written to."""

    inputs: list[Path]
    targets: dict[Path, Path]


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _writable_folder(folder: Path) -> None:
    """Refuse a folder that cannot be created or written (checks its nearest existing ancestor)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot create output folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write output folder {folder}: {existing} is not writable")


def _file_target(input_path: Path, output_path: Path) -> Path:
    """Where one input file's translation goes: ``output_path`` itself (an image file name) or inside it."""
    if output_path.is_dir() or (not output_path.suffix and not output_path.exists()):
        return output_path / f"{input_path.stem}.png"
    if output_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"output {output_path}: {output_path.suffix!r} is not an image extension; name a file "
                         f"ending in one of {', '.join(sorted(IMAGE_EXTENSIONS))}, or a folder (no suffix)")
    return output_path


def plan_translation(input_path: Path, output_path: Path) -> TranslationPlan:
    """Check the paths (input exists and holds images, output writable, no input overwritten) and plan the
    outputs; nothing is written. Raises FileNotFoundError, ValueError, NotADirectoryError, PermissionError."""
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.is_file():
        target = _file_target(input_path, output_path)
        if _same_path(target, input_path):
            raise ValueError(f"output {target} is the input file {input_path}; refusing to overwrite an input")
        _writable_folder(target.parent)
        return TranslationPlan([input_path], {input_path: target})
    if not input_path.is_dir():
        raise FileNotFoundError(f"input {input_path} does not exist")
    if output_path.exists() and (not output_path.is_dir() or _same_path(output_path, input_path)):
        raise ValueError(f"output {output_path} must be a folder different from the input folder {input_path}; "
                         "refusing to write translations over the inputs")
    inputs = list_images(input_path)
    if not inputs:
        raise FileNotFoundError(f"input folder {input_path} holds no images (files directly inside it ending in "
                                f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    _writable_folder(output_path)
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
    return TranslationPlan(inputs, targets)


_SAVE_OPTIONS: dict[str, dict[str, int]] = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def _save_image(image: Image.Image, dest: Path) -> None:
    """Write ``image`` atomically in the format of ``dest``'s extension (JPEG, WebP at quality 95)."""
    image_format = Image.registered_extensions()[dest.suffix.lower()]
    with atomic_path(dest) as tmp:
        image.save(tmp, format=image_format, **_SAVE_OPTIONS.get(image_format, {}))


def _decode_or_skip(path: Path, summary: TranslateSummary) -> Image.Image | None:
    try:
        return decode_image(path)
    except InvalidImage as exc:
        logger.warning("skipping %s: %s", path, exc.detail)
        summary.skipped.append(SkippedImage(path=str(path), reason=f"{exc.reason}: {exc.detail}"))
        return None


def calibration_images(paths: list[Path], count: int = CALIBRATION_IMAGES) -> list[Image.Image]:
    """The first ``count`` readable images of ``paths`` (int8's calibration set); unreadable ones are passed
    over. Raises FileNotFoundError when none is readable."""
    images = []
    for path in paths:
        try:
            images.append(decode_image(path))
        except InvalidImage:
            continue
        if len(images) == count:
            break
    if not images:
        raise FileNotFoundError(f"no readable calibration image among {len(paths)} file(s) "
                                f"({paths[0].parent if paths else 'none given'}): int8 needs images of the "
                                "model's input domain")
    logger.info("int8 calibration: %d image(s) from %s", len(images), paths[0].parent)
    return images


def translate_path(model: TranslatorLike | str | Path, input_path: Path, output_path: Path, *,
                   direction: str = "AtoB", batch_size: int = 8, device: str | torch.device | None = None,
                   backend: str = "auto", precision: str = "auto", memory_budget: int | None = None,
                   cache_dir: Path | None = None, calibration: Path | None = None) -> TranslateSummary:
    """Translate an image file or a folder of images (flat) and write them under ``output_path``.

    ``model``: a loaded model (``TranslatorLike``: backend and precision bound already), or a path
    ``load_translator`` loads on ``device`` with ``backend``, ``precision``, ``memory_budget`` and
    ``cache_dir`` (an exported model folder, one exported generator folder, or an official ``.pth``).
    int8 calibrates on the first ``CALIBRATION_IMAGES`` readable images of ``calibration`` (a folder),
    else of the inputs. ``direction`` picks the generator; a model of one generator uses it whatever the
    direction. For a file input, ``output_path`` may be an image file name (written in the format of its
    extension) or a folder. 1-channel generators get greyscale inputs and write greyscale images. The
    paths, the device and the choices are checked (``plan_translation``, ``check_device``,
    ``check_choice``) before the model is loaded; images over the memory budget are translated by tiles.
    """
    started = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_choice(backend, precision)
    plan = plan_translation(input_path, output_path)
    inputs, targets = plan.inputs, plan.targets
    if isinstance(model, (str, Path)):
        images = None
        if precision == "int8":
            images = calibration_images(list_images(calibration) if calibration is not None else inputs)
        translator = load_translator(model, backend=backend, precision=precision, device=check_device(device),
                                     memory_budget=memory_budget, cache_dir=cache_dir, calibration=images)
    else:
        translator = model
    use = direction
    if direction not in translator.directions and len(translator.directions) == 1:
        use = translator.directions[0]
        logger.info("%s is one generator: translating with it (direction %s does not apply)", model, direction)
    translator.multiple(use)  # an unknown direction fails before any file is read
    # A killed translate leaves its temporaries beside the outputs: remove those of dead processes.
    if input_path.is_file():
        sweep_stale_temps(targets[input_path].parent, name=targets[input_path].name)
    else:
        sweep_stale_temps(output_path)
    summary = TranslateSummary(model=str(model), direction=direction, backend=translator.describe())

    buckets: dict[tuple[int, int], list[tuple[Path, Image.Image]]] = {}

    def flush(size: tuple[int, int]) -> None:
        items = buckets.pop(size)
        translated = translator([image for _, image in items], direction=use, batch_size=batch_size)
        for (source, _), image in zip(items, translated, strict=True):
            _save_image(image, targets[source])
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
