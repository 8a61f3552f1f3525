"""The pre-decoded cache: each split of a dataset as one memory-mapped ``uint8`` array.

``write_decoded_cache(root, load_size=L)`` stores each split (trainA, trainB, testA, testB, testA_ref) as
one array ``N x L x L x 3`` (already resized with bicubic filtering, exactly like ``resize_and_crop``) in
``root/.decoded/<L>/<split>.npy`` plus ``index.json`` (file names in order, byte sizes and mtimes of the
sources). ``fresh_cache_array`` gives an array only while that index still matches the files on disk, so
a dataset never reads a stale cache: an item then costs a crop and a flip instead of a JPEG decode.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from cyclegan_core.data.images import decode_image, list_images
from cyclegan_core.data.transforms import resize_square

logger = logging.getLogger(__name__)

CACHE_SPLITS: tuple[str, ...] = ("trainA", "trainB", "testA", "testB", "testA_ref")
CACHE_DIRNAME = ".decoded"
CACHE_FORMAT_VERSION = 1


def cache_dir(root: str | os.PathLike[str], load_size: int) -> Path:
    return Path(root) / CACHE_DIRNAME / str(load_size)


def _source_stats(files: list[Path]) -> list[list[int]]:
    stats = [path.stat() for path in files]
    return [[stat.st_size, stat.st_mtime_ns] for stat in stats]


def _read_index(directory: Path) -> dict[str, Any]:
    try:
        index = json.loads((directory / "index.json").read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) and index.get("version") == CACHE_FORMAT_VERSION else {}


def _array_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


def fresh_cache_array(root: str | os.PathLike[str], split: str, load_size: int) -> Path | None:
    """The cache array of ``split`` if it exists and matches the image files on disk now, else None."""
    directory = cache_dir(root, load_size)
    entry = _read_index(directory).get("splits", {}).get(split)
    folder = Path(root) / split
    if not entry or not folder.is_dir():
        return None
    files = list_images(folder)
    array = directory / f"{split}.npy"
    if (
        entry.get("files") != [path.name for path in files]
        or entry.get("sources") != _source_stats(files)
        or _array_shape(array) != (len(files), load_size, load_size, 3)
    ):
        logger.info("pre-decoded cache %s is stale for %s: decoding image files instead", array, folder)
        return None
    return array


def write_decoded_cache(root: str | os.PathLike[str], *, load_size: int) -> Path:
    """Write (or refresh) the pre-decoded uint8 arrays of every split of ``root``; return the cache folder.

    Splits already up to date are skipped. Each array and the index are written to a temp file and
    renamed, so a reader never sees a half-written file (and re-checks freshness against the index);
    temp files a killed writer left in the cache folder are removed first.
    Raises ``InvalidImage`` naming the file if an image does not decode (ingestion quarantines those).
    """
    root = Path(root)
    directory = cache_dir(root, load_size)
    directory.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(directory)
    previous = _read_index(directory)
    index = copy.deepcopy(previous) or {"version": CACHE_FORMAT_VERSION, "load_size": load_size, "splits": {}}
    splits: dict[str, Any] = index["splits"]
    for split in CACHE_SPLITS:
        folder = root / split
        if not folder.is_dir():
            splits.pop(split, None)
            continue
        if fresh_cache_array(root, split, load_size) is not None:
            logger.debug("cache of %s is up to date", folder)
            continue
        files = list_images(folder)
        sources = _source_stats(files)
        target = directory / f"{split}.npy"
        with atomic_path(target, suffix=".npy") as tmp:
            array = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(files), load_size, load_size, 3)
            )
            for i, path in enumerate(
                tqdm(files, desc=f"decode {split}", unit="img", leave=False, disable=len(files) < 100)
            ):
                array[i] = resize_square(decode_image(path), load_size)
            array.flush()
            del array
        splits[split] = {"files": [path.name for path in files], "sources": sources}
        logger.info("cached %d images of %s at %dx%d in %s", len(files), folder, load_size, load_size, target)
    if index != previous:
        with atomic_path(directory / "index.json") as index_tmp:
            index_tmp.write_text(json.dumps(index, indent=1) + "\n")
    return directory
