"""Fetch one S3 object into the cache, validate it and place it: a clean split file or quarantine.

Each object is downloaded into a staging file inside the cache (retried on transient errors),
size-checked, hashed and decoded with ``cyclegan_core.data.images.decode_image``, then ``os.replace``-d into
place. Files that are already 8-bit RGB keep their original bytes; any other mode (grey, palette,
RGBA, CMYK, 16-bit) or an EXIF rotation is stored as the RGB PNG ``decode_image`` produces, named
``<stem>.png``, so every clean file decodes to RGB in any reader. Invalid files (zero-byte, not an
image, corrupt/truncated, too many pixels, unsupported mode) go to ``.quarantine/`` with the reason.
``sweep_stray_files`` removes whatever the manifest does not list, ``sweep_dead_temps`` the temporaries
a killed run left in the cache root and the decoded-cache folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from botocore.exceptions import IncompleteReadError
from PIL import Image

from cyclegan_core.atomic import sweep_stale_temps, temp_name
from cyclegan_core.data.images import InvalidImage, decode_image
from pipelines.clients.s3 import with_retries
from pipelines.ingest.manifest import ManifestEntry, file_sha256
from pipelines.ingest.planning import QUARANTINE_DIR, SPLITS, PlannedObject, ensure_inside

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
KEEP_ORIGINAL_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM"})
EXIF_ORIENTATION = 0x0112
DECODED_DIR = ".decoded"  # cyclegan_core.data.cache.CACHE_DIRNAME (importing that module imports torch)


def staging_file(staging: Path, rel: str, *, suffix: str) -> tuple[int, Path]:
    """A new file in ``staging`` named for its owner (``temp_name``); the ingest lock guards the folder."""
    path = staging / temp_name(PurePosixPath(rel).name, suffix=suffix)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), path


def fetch_to_staging(client: Any, bucket: str, obj: PlannedObject, staging: Path) -> tuple[Path, int, str, str]:
    """Download one object into a staging file: ``(path, size, etag, sha256)``; retries transient errors."""

    def attempt() -> tuple[Path, int, str, str]:
        response = client.get_object(Bucket=bucket, Key=obj.key)
        expected = int(response["ContentLength"])
        digest = hashlib.sha256()
        fd, tmp = staging_file(staging, obj.rel, suffix=".part")
        received = 0
        try:
            with os.fdopen(fd, "wb") as handle, contextlib.closing(response["Body"]) as body:
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
            if received != expected:  # a cut connection; botocore usually raises this itself
                raise IncompleteReadError(actual_bytes=received, expected_bytes=expected)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp), received, str(response.get("ETag", obj.etag)), digest.hexdigest()

    return with_retries(attempt, bucket=bucket, key=obj.key, action="download")


def needs_conversion(path: Path) -> bool:
    """True unless the file is plain 8-bit RGB in a common format with no EXIF rotation to apply."""
    with Image.open(path) as image:
        if image.mode != "RGB" or image.format not in KEEP_ORIGINAL_FORMATS:
            return True
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        return orientation not in (1, None)


def place_file(source: Path, dest: Path, root: Path) -> None:
    """Atomically move ``source`` to ``dest`` (inside ``root``), creating folders."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    ensure_inside(root, dest.parent)
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    os.replace(source, dest)


def converted_path(rel: str) -> str:
    return PurePosixPath(rel).with_suffix(".png").as_posix()


def validate_and_place(staged: Path, obj: PlannedObject, root: Path, claimed: frozenset[str],
                       size: int, etag: str, sha256: str) -> ManifestEntry:
    """Decode the staged file; move it (or its RGB PNG) into the split folder, or into quarantine."""
    entry = {"key": obj.key, "size": size, "etag": etag, "sha256": sha256, "split": obj.split}
    staging = staged.parent
    try:
        image = decode_image(staged)
        reason = ""
    except InvalidImage as exc:
        image, reason = None, exc.reason
        log.debug("quarantined s3 key %s: %s", obj.key, exc.detail)
    if image is not None:
        convert = needs_conversion(staged)
        rel = converted_path(obj.rel) if convert else obj.rel
        if rel != obj.rel and rel in claimed:
            reason = f"converted_name_collision: its RGB copy {rel} is also an object in the bucket"
        else:
            if convert:
                fd, png = staging_file(staging, obj.rel, suffix=".png")
                os.close(fd)
                image.save(png, format="PNG")
                staged.unlink()
                staged = Path(png)
            place_file(staged, root / rel, root)
            placed = (root / rel).stat()
            return ManifestEntry(**entry, path=rel, status="ok", local_size=placed.st_size,
                                 local_sha256=sha256 if not convert else file_sha256(root / rel),
                                 local_mtime_ns=placed.st_mtime_ns, converted=convert)
    rel = f"{QUARANTINE_DIR}/{obj.rel}"
    place_file(staged, root / rel, root)
    return ManifestEntry(**entry, path=rel, status="quarantined", reason=reason, local_size=size,
                         local_sha256=sha256)


def sweep_stray_files(root: Path, keep: set[str]) -> int:
    """Delete files in the split folders and quarantine that the manifest does not list; return count.

    Symlinks are removed, never followed; emptied sub-folders go too.
    """
    removed = 0
    for top in (*SPLITS, QUARANTINE_DIR):
        folder = root / top
        if not folder.is_dir() or folder.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            here = Path(dirpath)
            rel_dir = here.relative_to(root).as_posix()
            # os.walk lists symlinks to folders among dirnames (and does not descend into them)
            links = [name for name in dirnames if (here / name).is_symlink()]
            for name in (*filenames, *links):
                if f"{rel_dir}/{name}" not in keep:
                    (here / name).unlink()
                    removed += 1
            if here != folder and not any(here.iterdir()):
                here.rmdir()
    return removed


def sweep_dead_temps(root: Path) -> int:
    """Remove the temporaries dead processes left in ``root`` (manifest, quarantine list) and in each
    ``root/.decoded/<size>/`` (cache arrays, index); return how many. Live writers' are kept."""
    decoded = root / DECODED_DIR
    folders = [root, *(sorted(p for p in decoded.iterdir() if p.is_dir() and not p.is_symlink())
                       if decoded.is_dir() and not decoded.is_symlink() else [])]
    return sum(len(sweep_stale_temps(folder)) for folder in folders)
