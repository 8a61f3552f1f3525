"""Image file validation and decoding: every image the library reads goes through ``decode_image``.

``decode_image(path)`` either returns a fully decoded RGB ``PIL.Image.Image`` detached from its file,
or raises ``InvalidImage`` whose ``.reason`` is a short code for quarantine lists and metrics:

==================  ===========================================================================
reason              meaning
==================  ===========================================================================
``unreadable``      the path cannot be opened (missing, a directory, permission denied)
``empty``           the file has zero bytes
``not_image``       Pillow recognises no image format in it (e.g. text named ``.jpg``)
``too_large``       width x height exceeds ``MAX_PIXELS`` (checked from the header, BEFORE pixel data
                    is decoded, so a decompression bomb costs a few bytes of reading), or Pillow's
                    own decompression-bomb guard fired
``corrupt``         the header parses but the pixel data does not decode (truncated, broken stream)
``unsupported_mode`` a pixel format with no faithful RGB meaning (32-bit float, LAB, multi-channel)
==================  ===========================================================================

Mode conversion to RGB (what a model trained on photographs expects):

- ``1``, ``L``, ``P`` (without transparency), ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``: Pillow's
  ``convert("RGB")``; greyscale becomes three equal channels.
- 16-bit and 32-bit integer greyscale (``I;16*``, ``I``): values are read as 16-bit intensities
  (clipped to 0..65535) and scaled to 8 bits by ``v * 255 / 65535``, rounded.
- Transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, ``P`` with a transparency entry): the image
  is composited over opaque WHITE. Dropping alpha instead would expose whatever colour happens to be
  stored under fully transparent pixels (often black or garbage), which is not what a viewer sees.
- ``F`` (32-bit float) is rejected as ``unsupported_mode``: float images have no agreed intensity
  range, and guessing one would silently feed the model wrong values.
- The EXIF orientation tag is applied, so phone photos are upright as a viewer shows them.

Truncated files are errors: this module never enables ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` and
warns (once) if another library has.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
)
"""File name suffixes (lower case) that ``list_images`` treats as images."""

MAX_PIXELS: int = 64_000_000
"""Largest accepted width x height: a 64 MP photo decodes to ~190 MB of RGB; beyond it is a bomb."""

_INTEGER_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_CONVERTIBLE_MODES = frozenset({"RGB", "1", "L", "P", "CMYK", "YCbCr", "HSV", "RGBX"})

# warnings.catch_warnings swaps process-global state; the lock keeps concurrent decode_image calls
# (ingestion decodes from a thread pool) from restoring each other's filter lists out of order.
_OPEN_LOCK = threading.Lock()
_truncated_warning_given = False


class InvalidImage(ValueError):
    """A file that cannot be used as a training image; ``reason`` is a short machine-friendly code."""

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str) -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {detail} (reason: {reason})")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name.

    Hidden files (name starting with '.') and sub-folders are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder {folder} does not exist or is not a directory")
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()
    )


def decode_image(path: str | os.PathLike[str]) -> Image.Image:
    """Fully decode ``path`` into a new RGB image (see the module docstring), or raise ``InvalidImage``."""
    path = Path(path)
    _warn_if_truncated_images_allowed()
    try:
        size_bytes = path.stat().st_size
    except OSError as exc:
        raise InvalidImage(path, "unreadable", f"cannot read file: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise InvalidImage(path, "unreadable", "is a directory, expected an image file")
    if size_bytes == 0:
        raise InvalidImage(path, "empty", "file is empty (0 bytes)")

    image = _open_checked(path)
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(path, "corrupt", f"header declares an empty image ({width}x{height})")
        if width * height > MAX_PIXELS:
            raise InvalidImage(
                path,
                "too_large",
                f"{width}x{height} = {width * height} pixels exceeds MAX_PIXELS={MAX_PIXELS}",
            )
        try:
            image.load()
        except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, zlib.error...
            raise InvalidImage(
                path, "corrupt", f"pixel data does not decode ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            upright = ImageOps.exif_transpose(image) or image
        except Exception as exc:  # noqa: BLE001 - a malformed EXIF block must not reject good pixels
            logger.debug("ignoring unreadable EXIF orientation of %s: %s", path, exc)
            upright = image
        return _to_rgb(upright, path)
    finally:
        image.close()


def _open_checked(path: Path) -> Image.Image:
    """``Image.open`` (header only) with Pillow's decompression-bomb warning turned into a rejection."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidImage(path, "too_large", f"decompression bomb guard: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(path, "not_image", "not a recognised image format") from exc
    except OSError as exc:
        raise InvalidImage(path, "unreadable", f"cannot open file: {exc}") from exc
    except Exception as exc:  # a malformed header can make a format plugin raise anything
        raise InvalidImage(path, "corrupt", f"header does not parse ({type(exc).__name__}: {exc})") from exc


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """A new RGB image (never ``image`` itself, which the caller closes)."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _INTEGER_GREY_MODES:
        values = np.asarray(image, dtype=np.int64)
        grey = np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    if mode in _CONVERTIBLE_MODES:
        return image.convert("RGB")
    raise InvalidImage(path, "unsupported_mode", f"pixel mode {mode!r} has no faithful RGB conversion")


def _warn_if_truncated_images_allowed() -> None:
    global _truncated_warning_given
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _truncated_warning_given:
        _truncated_warning_given = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was enabled by another module: truncated images may "
            "decode with grey fill instead of being rejected"
        )
