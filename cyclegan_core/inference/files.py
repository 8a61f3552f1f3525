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
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from cyclegan_core.config import StrictModel
from cyclegan_core.data.images import IMAGE_EXTENSIONS, InvalidImage, decode_image, list_images
from cyclegan_core.inference.backends import (
    BACKENDS,
    PRECISIONS,
    TranslatorLike,
    check_choice,
    load_translator,
)
from cyclegan_core.inference.backends.quantize import CALIBRATION_IMAGES
from cyclegan_core.inference.memory import parse_bytes
from cyclegan_core.inference.pretrained import DIRECTIONS

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


class TranslateOptionsError(ValueError):
    """A translate option out of its choices; ``field`` names it (empty for a pair that does not go together)."""

    def __init__(self, field: str, detail: str) -> None:
        joined = f"{field} {detail}" if detail.startswith("must ") else f"{field}: {detail}"
        super().__init__(joined if field else detail)
        self.field, self.detail = field, detail


class TranslateOptions(StrictModel):
    """How to translate, for ``cyclegan translate`` (local files and the s3:// batch job), the
    ``translate-cyclegan`` flow and the batch job: validated once where they enter (``translate_options``)."""

    direction: str = Field("AtoB", description="AtoB or BtoA: picks G_AB or G_BA of a model folder")
    batch_size: int = Field(8, ge=1, description="images per forward pass")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... (None: cuda if available; the batch job: "
                               "GPU actors when the Ray cluster has GPUs)")
    backend: str = Field("auto", description="auto (measured on this machine), torch or openvino (CPU)")
    precision: str = Field("auto", description="auto, fp32, bf16, fp16 (torch) or int8 (OpenVINO, local files)")
    memory_budget: int | None = Field(None, ge=1, description="bytes translating may hold (a size like 2GiB is "
                                      "read); an image over it is translated by tiles")
    calibration: Path | None = Field(None, description="int8: a folder of images to calibrate on")
    max_skipped: int | None = Field(0, ge=0, description="unreadable inputs tolerated (quarantined by the batch "
                                    "job); None: any number")
    actors: int | None = Field(None, ge=1, description="the batch job's Ray actors (None: one per GPU, else CPU)")

    @field_validator("direction")
    @classmethod
    def _direction(cls, value: str) -> str:
        return _one_of(value, DIRECTIONS)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _one_of(value, BACKENDS)

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        return _one_of(value, PRECISIONS)

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget(cls, value: object) -> object:
        return parse_bytes(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _together(self) -> TranslateOptions:
        check_choice(self.backend, self.precision)
        if self.calibration is not None and self.precision != "int8":
            raise ValueError("calibration is for precision int8")
        return self

    @property
    def use_gpu(self) -> bool | None:
        """The batch job's actors: on GPUs (True), on CPUs (False) or GPUs when the cluster has any (None)."""
        return None if self.device is None else self.device.startswith("cuda")


def _one_of(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def translate_options(**values: object) -> TranslateOptions:
    """``TranslateOptions`` from an entry's arguments; raises TranslateOptionsError naming the field and
    its choices."""
    try:
        return TranslateOptions(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        detail = str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"]
        detail = detail if detail.startswith("must ") else f"{detail[0].lower()}{detail[1:]}"
        raise TranslateOptionsError(field, detail) from None


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


def translate_path(model: TranslatorLike | str | Path, input_path: Path, output_path: Path,
                   options: TranslateOptions | None = None, *, cache_dir: Path | None = None) -> TranslateSummary:
    """Translate an image file or a folder of images (flat) and write them under ``output_path``.

    ``model``: a loaded model (``TranslatorLike``: backend and precision bound already), or a path
    ``load_translator`` loads as ``options`` say (device, backend, precision, memory budget; an exported
    model folder, one exported generator folder, or an official ``.pth``) with the measured decisions and
    converted models of ``cache_dir``. int8 calibrates on the first ``CALIBRATION_IMAGES`` readable images
    of ``options.calibration`` (a folder), else of the inputs. ``options.direction`` picks the generator; a
    model of one generator uses it whatever the direction. For a file input, ``output_path`` may be an
    image file name (written in the format of its extension) or a folder. 1-channel generators get
    greyscale inputs and write greyscale images. The paths and the device are checked (``plan_translation``,
    ``check_device``) before the model is loaded; images over the memory budget are translated by tiles.
    """
    started = time.perf_counter()
    options = TranslateOptions() if options is None else options
    input_path, output_path = Path(input_path), Path(output_path)
    plan = plan_translation(input_path, output_path)
    translator = model if not isinstance(model, (str, Path)) else _load(model, options, plan, cache_dir)
    use = options.direction
    if use not in translator.directions and len(translator.directions) == 1:
        use = translator.directions[0]
        logger.info("%s is one generator: translating with it (direction %s does not apply)", model, options.direction)
    translator.multiple(use)  # an unknown direction fails before any file is read
    # A killed translate leaves its temporaries beside the outputs: remove those of dead processes.
    if input_path.is_file():
        sweep_stale_temps(plan.targets[input_path].parent, name=plan.targets[input_path].name)
    else:
        sweep_stale_temps(output_path)
    summary = TranslateSummary(model=str(model), direction=options.direction, backend=translator.describe())
    _translate_files(translator, plan, summary, direction=use, batch_size=options.batch_size)
    summary.seconds = round(time.perf_counter() - started, 3)
    logger.info("translated %d image(s) to %s, skipped %d, in %.1fs", summary.translated, output_path,
                len(summary.skipped), summary.seconds)
    return summary


def _load(model: str | Path, options: TranslateOptions, plan: TranslationPlan,
          cache_dir: Path | None) -> TranslatorLike:
    """The translator of the model at ``model`` as ``options`` ask (int8: calibrated first)."""
    images = None
    if options.precision == "int8":
        images = calibration_images(list_images(options.calibration) if options.calibration is not None
                                    else plan.inputs)
    return load_translator(model, backend=options.backend, precision=options.precision,
                           device=check_device(options.device), memory_budget=options.memory_budget,
                           cache_dir=cache_dir, calibration=images)


def _translate_files(translator: TranslatorLike, plan: TranslationPlan, summary: TranslateSummary, *,
                     direction: str, batch_size: int) -> None:
    """Decode the plan's inputs (an unreadable one is skipped into ``summary``), translate images of one size
    together in batches of ``batch_size`` and write each to its target."""
    buckets: dict[tuple[int, int], list[tuple[Path, Image.Image]]] = {}

    def flush(size: tuple[int, int]) -> None:
        items = buckets.pop(size)
        translated = translator([image for _, image in items], direction=direction, batch_size=batch_size)
        for (source, _), image in zip(items, translated, strict=True):
            _save_image(image, plan.targets[source])
            summary.outputs.append(str(plan.targets[source]))
        summary.translated += len(items)

    with tqdm(total=len(plan.inputs), desc="translate", unit="img", disable=len(plan.inputs) < 2) as progress:
        for path in plan.inputs:
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
