"""The dataset manifest: one record per listed object, the quick check that skips unchanged objects,
the dataset version and the pre-decoded cache it points to.

``manifest.json`` lists every object (key, path, size, etag, sha256, split, status, reason) and
``quarantine.json`` the invalid ones; both are written atomically. An object is kept without a
download when its size and ETag match the manifest and its local file still has the recorded size
and mtime (rsync's quick check; otherwise the file's sha256 is compared). The dataset version is the
sha256 of the sorted clean entries (key relative to the prefix, size, sha256 of the S3 content): the
same images give the same version wherever they are stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from stat import S_ISREG
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cyclegan_core.atomic import write_json_atomic
from pipelines.ingest.planning import EXPECTED_LAYOUT, REQUIRED_SPLITS, SPLITS, IngestError, PlannedObject
from pipelines.parallel import run_parallel

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
QUARANTINE_FILE = "quarantine.json"
MANIFEST_FORMAT = 1


class ManifestEntry(BaseModel):
    """One listed object and what became of it."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="full S3 key")
    path: str = Field(description="local file relative to the dataset root (clean or .quarantine/)")
    size: int = Field(description="bytes of the S3 object")
    etag: str
    sha256: str = Field(description="sha256 of the S3 object's content")
    split: str
    status: Literal["ok", "quarantined"]
    reason: str = ""
    local_size: int = Field(0, description="bytes of the local file (differs from size when converted)")
    local_sha256: str = ""
    local_mtime_ns: int = Field(0, description="mtime of the local file when it was placed (quick check)")
    converted: bool = Field(False, description="stored as the RGB PNG decode_image produced")


class DecodedCacheInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    load_size: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = MANIFEST_FORMAT
    uri: str
    version: str
    objects: list[ManifestEntry]
    decoded_cache: DecodedCacheInfo | None = None


def load_manifest(path: Path) -> Manifest | None:
    """The previous manifest, or None if there is none or it is unreadable (then everything is fetched)."""
    if not path.exists():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable manifest %s (%s): every object will be fetched again", path, exc)
        return None
    if manifest.format != MANIFEST_FORMAT:
        log.info("manifest %s has format %d (want %d): fetching everything", path, manifest.format,
                 MANIFEST_FORMAT)
        return None
    return manifest


def write_manifest(root: Path, manifest: Manifest, *, with_quarantine: bool = True) -> None:
    """Write ``root/quarantine.json`` (unless told not to) and then ``root/manifest.json``, atomically."""
    if with_quarantine:
        write_json_atomic(root / QUARANTINE_FILE, [{"key": e.key, "path": e.path, "reason": e.reason}
                                                   for e in manifest.objects if e.status == "quarantined"],
                          indent=1)
    write_json_atomic(root / MANIFEST_FILE, manifest.model_dump(mode="json"))


def dataset_version(entries: Iterable[ManifestEntry], prefix: str) -> str:
    """sha256 of the sorted clean entries (key relative to the prefix, size, content sha256)."""
    rows = sorted((e.key[len(prefix):], e.size, e.sha256) for e in entries if e.status == "ok")
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def quick_check(entry: ManifestEntry | None, obj: PlannedObject, root: Path) -> bool | None:
    """Whether the manifest already holds this exact object with its local file intact, from metadata
    alone: True or False, or None when only hashing the local file can tell (its mtime moved)."""
    if entry is None or entry.size != obj.size or entry.etag != obj.etag or entry.split != obj.split:
        return False
    if entry.status == "quarantined":
        return True  # same bytes as last time: still invalid, no need to fetch them again
    try:
        stat = os.lstat(root / entry.path)
    except OSError:
        return False
    if not S_ISREG(stat.st_mode) or stat.st_size != entry.local_size:
        return False
    if entry.local_mtime_ns and stat.st_mtime_ns == entry.local_mtime_ns:
        return True  # rsync's quick check: same size and mtime as when we placed it
    return None


def local_file_intact(entry: ManifestEntry, root: Path) -> bool:
    try:
        return file_sha256(root / entry.path) == entry.local_sha256
    except OSError:
        return False


def unchanged_objects(objects: list[PlannedObject], old_entries: dict[str, ManifestEntry], root: Path, *,
                      max_workers: int) -> list[bool]:
    """For each object, whether its manifest entry and local file can be kept as they are.

    The quick check (a stat per file) runs here; only files whose mtime moved are hashed, in parallel:
    an unchanged re-ingest costs one listing plus one ``lstat`` per object.
    """
    flags = [quick_check(old_entries.get(obj.key), obj, root) for obj in objects]
    to_hash = [i for i, flag in enumerate(flags) if flag is None]
    hashed = run_parallel(lambda i: local_file_intact(old_entries[objects[i].key], root), to_hash,
                          max_workers=max_workers, desc="verify")
    for i, intact in zip(to_hash, hashed):
        flags[i] = intact
    return [bool(flag) for flag in flags]


def split_counts(entries: Iterable[ManifestEntry]) -> dict[str, int]:
    counts = {split: 0 for split in SPLITS if split != "testA_ref"}
    for entry in entries:
        if entry.status == "ok":
            counts[entry.split] = counts.get(entry.split, 0) + 1
    return counts


def check_clean_splits(uri: str, entries: list[ManifestEntry], root: Path) -> None:
    """Fail when every image of a train split was quarantined."""
    counts = split_counts(entries)
    for split in REQUIRED_SPLITS:
        if counts.get(split, 0) == 0:
            bad = sum(1 for e in entries if e.split == split and e.status == "quarantined")
            raise IngestError(f"{uri} has no valid {split}/ images ({bad} quarantined, see "
                              f"{root / QUARANTINE_FILE}); {EXPECTED_LAYOUT}")


def refresh_decoded_cache(root: Path, manifest: Manifest, *, load_size: int) -> Manifest:
    """Bring the pre-decoded uint8 cache up to date (``write_decoded_cache`` skips fresh splits itself)."""
    from cyclegan_core.data.cache import write_decoded_cache  # torch: only once there is something to decode

    path = Path(write_decoded_cache(root, load_size=load_size)).resolve()
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return manifest.model_copy(update={"decoded_cache": DecodedCacheInfo(path=rel, load_size=load_size)})
