"""Where each listed S3 object goes in the local cache: key safety, the split layout, the plan.

Keys that would escape the cache (``..``, absolute, backslashes, control or format characters, empty
segments, drive letters, over-long names) are *rejected* with a reason; keys outside a split folder
or without an image suffix are *ignored* and counted. Pure: no I/O.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cyclegan_core.data.images import IMAGE_EXTENSIONS
from pipelines.clients.s3 import RemoteObject

SPLITS: tuple[str, ...] = ("trainA", "trainB", "testA", "testB", "testA_ref")
REQUIRED_SPLITS: tuple[str, ...] = ("trainA", "trainB")
EXPECTED_LAYOUT = "expected trainA/ trainB/ testA/ testB/ (and optional testA_ref/)"
QUARANTINE_DIR = ".quarantine"
MAX_SEGMENT_BYTES = 255  # longest file name on ext4/xfs/apfs


class IngestError(RuntimeError):
    """The prefix cannot be turned into a usable dataset (missing split, nothing clean, unsafe prefix)."""


class UnsafeKey(ValueError):
    """An object key that cannot be mapped to a path inside the cache; ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"unsafe key {key!r}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class PlannedObject(RemoteObject):
    """A listed object that belongs to the dataset: where it goes locally."""

    split: str
    rel: str  # posix path relative to the dataset root, NFC-normalised


@dataclass(frozen=True)
class Plan:
    objects: list[PlannedObject]
    rejected: list[tuple[str, str]]
    ignored: int


def safe_relative_key(relative: str) -> PurePosixPath:
    """Map a key (relative to the prefix) to a safe relative path, or raise ``UnsafeKey`` with a reason.

    The result is NFC-normalised, has only non-empty segments other than ``.``/``..``, no backslash,
    no control/format/unassigned characters, no drive letter and segments of at most 255 bytes.
    """
    if not relative:
        raise UnsafeKey(relative, "empty path")
    for ch in relative:
        if ch == "\\":
            raise UnsafeKey(relative, "contains a backslash")
        # isprintable() is False for Cc/Cf (controls, bidi overrides, zero-width), Cs/Co/Cn and Z* but ' '
        if not ch.isprintable():
            raise UnsafeKey(relative, f"contains non-printable character U+{ord(ch):04X}")
    normal = unicodedata.normalize("NFC", relative)
    if normal.startswith("/"):
        raise UnsafeKey(relative, "absolute path")
    parts = normal.split("/")
    for part in parts:
        if part == "":
            raise UnsafeKey(relative, "empty path segment ('//')")
        if part in (".", ".."):
            raise UnsafeKey(relative, f"'{part}' path segment")
        if len(part.encode()) > MAX_SEGMENT_BYTES:
            raise UnsafeKey(relative, f"path segment longer than {MAX_SEGMENT_BYTES} bytes")
    if len(parts[0]) == 2 and parts[0][1] == ":" and parts[0][0].isalpha():
        raise UnsafeKey(relative, "drive-letter path")
    return PurePosixPath(normal)


def normalise_prefix(prefix: str) -> str:
    """``a/b`` -> ``a/b/``; the empty prefix (whole bucket) stays empty."""
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def dataset_root(cache_dir: str | os.PathLike[str], bucket: str, prefix: str) -> Path:
    """``cache_dir/<bucket>/<prefix>`` with every segment checked like an object key."""
    try:
        bucket_part = safe_relative_key(bucket)
        prefix_part = safe_relative_key(prefix.strip("/")) if prefix.strip("/") else PurePosixPath()
    except UnsafeKey as exc:
        raise IngestError(f"s3://{bucket}/{prefix} cannot be cached locally: {exc.reason}") from exc
    if len(bucket_part.parts) != 1:
        raise IngestError(f"invalid bucket name {bucket!r}")
    return Path(cache_dir) / bucket_part / prefix_part


def ensure_inside(root: Path, path: Path) -> Path:
    """``path`` resolved, after checking it (symlinks included) stays inside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise IngestError(f"refusing to write {path}: it resolves to {resolved}, outside the cache {root}")
    return resolved


def plan_objects(objects: Iterable[RemoteObject], prefix: str) -> Plan:
    """Sort listed objects into dataset files, rejected keys and ignored keys."""
    planned: list[PlannedObject] = []
    rejected: list[tuple[str, str]] = []
    ignored = 0
    seen: dict[str, str] = {}
    for obj in sorted(objects, key=lambda o: o.key):
        relative = obj.key[len(prefix):]
        if relative.endswith("/") and obj.size == 0:  # a "folder" marker made by consoles
            ignored += 1
            continue
        try:
            rel = safe_relative_key(relative)
        except UnsafeKey as exc:
            rejected.append((obj.key, exc.reason))
            continue
        if len(rel.parts) != 2 or rel.parts[0] not in SPLITS or rel.suffix.lower() not in IMAGE_EXTENSIONS \
                or rel.name.startswith("."):
            ignored += 1
            continue
        if rel.as_posix() in seen:
            rejected.append((obj.key, f"same local path as key {seen[rel.as_posix()]!r} after NFC normalisation"))
            continue
        seen[rel.as_posix()] = obj.key
        planned.append(PlannedObject(obj.key, obj.size, obj.etag, rel.parts[0], rel.as_posix()))
    return Plan(planned, rejected, ignored)


def check_required_splits(uri: str, plan: Plan) -> None:
    """Fail before downloading anything when a train split has no image keys at all."""
    present = {o.split for o in plan.objects}
    if not plan.objects and not plan.rejected:
        raise IngestError(f"{uri} has no images (no objects under a split folder); {EXPECTED_LAYOUT}")
    for split in REQUIRED_SPLITS:
        if split not in present:
            raise IngestError(f"{uri} has no {split}/ images; {EXPECTED_LAYOUT}")
