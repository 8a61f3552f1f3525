"""Ingest an S3 dataset prefix into a verified local cache, and upload a local folder to S3.

``ingest_prefix("s3://bucket/prefix", cache_dir)`` mirrors ``prefix/{trainA,trainB,testA,testB,testA_ref}/``
into ``cache_dir/<bucket>/<prefix>/``:

1. list the prefix (one delimited listing, then every sub-folder in parallel with the
   ``list_objects_v2`` paginator); keys that would escape the cache (``..``, absolute,
   backslashes, control or format characters, empty segments) are *rejected* and reported; keys outside
   a split folder or without an image suffix are *ignored* and counted;
2. objects whose size and ETag match ``manifest.json`` and whose local file still has the recorded size
   and mtime (rsync's quick check; otherwise its sha256 is compared) are skipped (an unchanged
   re-ingest downloads nothing);
3. the rest are downloaded in parallel (bounded thread pool, retries from ``pipelines.s3``) into a
   staging file inside the cache, size-checked, hashed, and validated with
   ``cyclegan_core.images.decode_image``; then ``os.replace``-d into place. Files that are already
   8-bit RGB keep their original bytes; any other mode (grey, palette, RGBA, CMYK, 16-bit) is stored as
   the RGB PNG that ``decode_image`` produces, named ``<stem>.png``, so every clean file decodes to RGB in
   any reader. Invalid files (zero-byte, not an image, corrupt/truncated, too many pixels, unsupported
   mode) go to ``.quarantine/`` with the reason, never into a split folder;
4. objects gone from the bucket are deleted locally, and any stray file in a split folder is swept;
5. ``manifest.json`` (every object: key, path, size, etag, sha256, split, status, reason) and
   ``quarantine.json`` are written atomically, then the pre-decoded training cache
   (``cyclegan_core.data.write_decoded_cache``) is refreshed (it re-decodes only splits that changed).

The dataset version is the sha256 of the sorted clean entries (key relative to the prefix, size,
sha256 of the S3 content): the same images give the same version wherever they are stored.

``upload_folder(local_dir, "s3://bucket/prefix")`` uploads every file under ``local_dir`` in parallel,
skipping objects whose size and ETag (MD5, or multipart MD5) already match.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import mimetypes
import os
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import Any, Literal

from botocore.exceptions import IncompleteReadError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path
from cyclegan_core.images import IMAGE_EXTENSIONS, InvalidImage, decode_image
from pipelines.records import DatasetRef
from pipelines.s3 import make_s3_client, parse_s3_uri, with_retries

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("trainA", "trainB", "testA", "testB", "testA_ref")
REQUIRED_SPLITS: tuple[str, ...] = ("trainA", "trainB")
EXPECTED_LAYOUT = "expected trainA/ trainB/ testA/ testB/ (and optional testA_ref/)"
MANIFEST_FILE = "manifest.json"
QUARANTINE_FILE = "quarantine.json"
QUARANTINE_DIR = ".quarantine"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
MANIFEST_FORMAT = 1
CHUNK_BYTES = 1 << 20
MAX_SEGMENT_BYTES = 255  # longest file name on ext4/xfs/apfs
KEEP_ORIGINAL_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM"})
EXIF_ORIENTATION = 0x0112
# upload_folder: objects up to this size go in one PUT (ETag = MD5); larger ones are multipart.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
# Part sizes tools use by default (S3 minimum 5 MiB, aws cli/s3transfer 8 MiB), tried to match multipart ETags.
KNOWN_PART_SIZES = tuple(m * 1024 * 1024 for m in (5, 8, 16, 32, 64, 100, 128, 256, 512))


class IngestError(RuntimeError):
    """The prefix cannot be turned into a usable dataset (missing split, nothing clean, unsafe prefix)."""


class UnsafeKey(ValueError):
    """An object key that cannot be mapped to a path inside the cache; ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"unsafe key {key!r}: {reason}")
        self.key = key
        self.reason = reason


# --- records -------------------------------------------------------------------------------------


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


class IngestSummary(BaseModel):
    """What ``ingest_prefix`` did; ``.dataset`` is the record the training stage takes."""

    uri: str
    root: Path
    manifest: Path
    version: str
    counts: dict[str, int]
    listed: int = Field(description="objects under the prefix")
    downloaded: int
    skipped_unchanged: int
    removed: int = Field(description="local files deleted because their object is gone or changed place")
    ignored: int = Field(description="keys outside a split folder or without an image suffix")
    quarantined: list[tuple[str, str]] = Field(description="(key, reason) of invalid objects")
    rejected_keys: list[tuple[str, str]] = Field(description="(key, reason) of keys unsafe as local paths")
    bytes_downloaded: int
    seconds: float = Field(description="listing + download + validation (excludes the decoded cache)")
    mb_per_s: float
    decoded_cache: Path | None = None
    cache_seconds: float = Field(0.0, description="time spent writing the pre-decoded cache")

    @property
    def dataset(self) -> DatasetRef:
        return DatasetRef(uri=self.uri, root=self.root, manifest=self.manifest, version=self.version,
                          counts=self.counts, quarantined=len(self.quarantined))

    def one_line(self) -> str:
        counts = " ".join(f"{split}={n}" for split, n in self.counts.items())
        return (f"ingested {self.uri} -> {self.root} version={self.version[:12]} {counts} "
                f"downloaded={self.downloaded} unchanged={self.skipped_unchanged} removed={self.removed} "
                f"quarantined={len(self.quarantined)} rejected={len(self.rejected_keys)} "
                f"ignored={self.ignored} {self.bytes_downloaded / 1e6:.1f} MB in {self.seconds:.2f}s "
                f"({self.mb_per_s:.1f} MB/s)")


class UploadSummary(BaseModel):
    uri: str
    local_dir: Path
    files: int
    uploaded: int
    skipped_unchanged: int
    bytes_uploaded: int
    seconds: float
    mb_per_s: float


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class PlannedObject:
    """A listed object that belongs to the dataset: where it goes locally."""

    key: str
    size: int
    etag: str
    split: str
    rel: str  # posix path relative to the dataset root, NFC-normalised


@dataclass(frozen=True)
class Plan:
    objects: list[PlannedObject]
    rejected: list[tuple[str, str]]
    ignored: int


# --- keys and paths ------------------------------------------------------------------------------


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
    """Sort listed objects into dataset files, rejected keys and ignored keys (pure, no I/O)."""
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


# --- manifest ------------------------------------------------------------------------------------


def write_json_atomic(path: Path, payload: Any, *, indent: int | None = None) -> None:
    """Write JSON to a temp file beside ``path``, fsync, then rename over it."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent))


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


def dataset_version(entries: Iterable[ManifestEntry], prefix: str) -> str:
    """sha256 of the sorted clean entries (key relative to the prefix, size, content sha256)."""
    rows = sorted((e.key[len(prefix):], e.size, e.sha256) for e in entries if e.status == "ok")
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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


# --- download and validation ---------------------------------------------------------------------


def fetch_to_staging(client: Any, bucket: str, obj: PlannedObject, staging: Path) -> tuple[Path, int, str, str]:
    """Download one object into a staging file: ``(path, size, etag, sha256)``; retries transient errors."""

    def attempt() -> tuple[Path, int, str, str]:
        response = client.get_object(Bucket=bucket, Key=obj.key)
        expected = int(response["ContentLength"])
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=staging, suffix=".part")
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
                fd, png = tempfile.mkstemp(dir=staging, suffix=".png")
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


def run_parallel(fn: Callable[[Any], Any], items: list[Any], *, max_workers: int, desc: str) -> list[Any]:
    """``[fn(item) for item in items]`` on a bounded thread pool with a progress bar; the first error
    cancels what has not started and is re-raised."""
    results: list[Any] = [None] * len(items)
    if not items:
        return results
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3") as pool, \
            tqdm(total=len(items), desc=desc, unit="obj", disable=None, leave=False) as bar:
        futures: dict[Future[Any], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            error = future.exception()
            if error is not None:
                for other in futures:
                    other.cancel()
                raise error
            results[futures[future]] = future.result()
            bar.update(1)
    return results


# --- listing -------------------------------------------------------------------------------------


def list_objects(client: Any, bucket: str, prefix: str, *, max_workers: int = 8) -> list[RemoteObject]:
    """Every object under ``prefix``, sorted by key.

    One delimited listing finds the sub-folders (``trainA/``, ``trainB/``, ...), which are then listed
    in parallel (each with the paginator): on a dataset layout that divides the listing latency by the
    number of splits. Each listing is retried as a whole on transient errors.
    """
    top, folders = list_level(client, bucket, prefix, delimiter="/")
    nested = run_parallel(lambda folder: list_level(client, bucket, folder)[0], folders,
                          max_workers=max_workers, desc="list")
    return sorted((obj for objects in [top, *nested] for obj in objects), key=lambda o: o.key)


def list_level(client: Any, bucket: str, prefix: str, *, delimiter: str | None = None,
               ) -> tuple[list[RemoteObject], list[str]]:
    """Objects under ``prefix`` (all pages) and, with a delimiter, the common prefixes below it."""

    def attempt() -> tuple[list[RemoteObject], list[str]]:
        paginator = client.get_paginator("list_objects_v2")
        options = {"Delimiter": delimiter} if delimiter else {}
        found: list[RemoteObject] = []
        folders: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **options):
            for item in page.get("Contents", []):
                found.append(RemoteObject(item["Key"], int(item["Size"]), str(item.get("ETag", ""))))
            folders.extend(common["Prefix"] for common in page.get("CommonPrefixes", []))
        return found, folders

    return with_retries(attempt, bucket=bucket, key=prefix or None, action="list")


# --- ingest --------------------------------------------------------------------------------------


def ingest_prefix(uri: str, cache_dir: str | os.PathLike[str], *, load_size: int = 286, max_workers: int = 16,
                  client: Any = None) -> IngestSummary:
    """Mirror and validate an S3 dataset prefix into ``cache_dir/<bucket>/<prefix>`` (module docstring).

    Raises ``IngestError`` (missing/empty train split, unsafe prefix) or ``pipelines.s3.S3Error``
    (permanent S3 failure, or transient failures that outlived the retries).
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    start = time.perf_counter()
    bucket, raw_prefix = parse_s3_uri(uri)
    prefix = normalise_prefix(raw_prefix)
    root = dataset_root(cache_dir, bucket, prefix)
    client = client or make_s3_client(max_pool_connections=max_workers)

    plan = plan_objects(list_objects(client, bucket, prefix, max_workers=max_workers), prefix)
    check_required_splits(uri, plan)
    for key, reason in plan.rejected:
        log.warning("rejected s3 key %r: %s", key, reason)

    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.resolve(), uri):
        return ingest_into(root.resolve(), uri, prefix, bucket, plan, client, load_size=load_size,
                           max_workers=max_workers, start=start)


@contextlib.contextmanager
def exclusive_lock(root: Path, uri: str) -> Iterator[None]:
    """Hold ``root/.lock`` so two ingests of the same prefix on this machine cannot interleave."""
    with open(root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise IngestError(f"another ingest of {uri} is running in {root} (lock {root / LOCK_FILE}); "
                              "wait for it to finish") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ingest_into(root: Path, uri: str, prefix: str, bucket: str, plan: Plan, client: Any, *, load_size: int,
                max_workers: int, start: float) -> IngestSummary:
    """The locked part of ``ingest_prefix``: fetch what changed, sweep, write the manifest and cache."""
    staging = root / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run
    staging.mkdir()
    manifest_path = root / MANIFEST_FILE
    previous = load_manifest(manifest_path)
    old_entries = {e.key: e for e in previous.objects} if previous else {}

    unchanged_flags = unchanged_objects(plan.objects, old_entries, root, max_workers=max_workers)
    kept = [old_entries[o.key] for o, same in zip(plan.objects, unchanged_flags) if same]
    to_fetch = [o for o, same in zip(plan.objects, unchanged_flags) if not same]
    claimed = frozenset(o.rel for o in plan.objects)

    def download(obj: PlannedObject) -> ManifestEntry:
        staged, size, etag, sha = fetch_to_staging(client, bucket, obj, staging)
        return validate_and_place(staged, obj, root, claimed, size, etag, sha)

    try:
        fetched: list[ManifestEntry] = run_parallel(download, to_fetch, max_workers=max_workers,
                                                    desc=f"ingest {uri}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    entries = sorted(kept + fetched, key=lambda e: e.key)
    removed = sweep_stray_files(root, {e.path for e in entries})
    version = dataset_version(entries, prefix)
    quarantined = [(e.key, e.reason) for e in entries if e.status == "quarantined"]
    counts = split_counts(entries)
    manifest = Manifest(uri=uri, version=version, objects=entries,
                        decoded_cache=previous.decoded_cache if previous else None)
    if manifest != previous or not (root / QUARANTINE_FILE).is_file():
        write_json_atomic(root / QUARANTINE_FILE, [{"key": e.key, "path": e.path, "reason": e.reason}
                                                   for e in entries if e.status == "quarantined"], indent=1)
        write_json_atomic(manifest_path, manifest.model_dump(mode="json"))
    check_clean_splits(uri, entries, root)

    seconds = time.perf_counter() - start
    bytes_downloaded = sum(e.size for e in fetched)
    cache_start = time.perf_counter()
    refreshed = refresh_decoded_cache(root, manifest, load_size=load_size)
    if refreshed.decoded_cache != manifest.decoded_cache:
        manifest = refreshed
        write_json_atomic(manifest_path, manifest.model_dump(mode="json"))
    summary = IngestSummary(
        uri=uri, root=root, manifest=manifest_path, version=version, counts=counts,
        listed=len(plan.objects) + len(plan.rejected) + plan.ignored, downloaded=len(fetched),
        skipped_unchanged=len(kept), removed=removed, ignored=plan.ignored, quarantined=quarantined,
        rejected_keys=plan.rejected, bytes_downloaded=bytes_downloaded, seconds=round(seconds, 4),
        mb_per_s=round(bytes_downloaded / 1e6 / max(seconds, 1e-9), 3),
        decoded_cache=root / manifest.decoded_cache.path if manifest.decoded_cache else None,
        cache_seconds=round(time.perf_counter() - cache_start, 4),
    )
    log.info(summary.one_line())
    return summary


def check_required_splits(uri: str, plan: Plan) -> None:
    """Fail before downloading anything when a train split has no image keys at all."""
    present = {o.split for o in plan.objects}
    if not plan.objects and not plan.rejected:
        raise IngestError(f"{uri} has no images (no objects under a split folder); {EXPECTED_LAYOUT}")
    for split in REQUIRED_SPLITS:
        if split not in present:
            raise IngestError(f"{uri} has no {split}/ images; {EXPECTED_LAYOUT}")


def check_clean_splits(uri: str, entries: list[ManifestEntry], root: Path) -> None:
    """Fail when every image of a train split was quarantined."""
    counts = split_counts(entries)
    for split in REQUIRED_SPLITS:
        if counts.get(split, 0) == 0:
            bad = sum(1 for e in entries if e.split == split and e.status == "quarantined")
            raise IngestError(f"{uri} has no valid {split}/ images ({bad} quarantined, see "
                              f"{root / QUARANTINE_FILE}); {EXPECTED_LAYOUT}")


def split_counts(entries: Iterable[ManifestEntry]) -> dict[str, int]:
    counts = {split: 0 for split in SPLITS if split != "testA_ref"}
    for entry in entries:
        if entry.status == "ok":
            counts[entry.split] = counts.get(entry.split, 0) + 1
    return counts


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


def refresh_decoded_cache(root: Path, manifest: Manifest, *, load_size: int) -> Manifest:
    """Bring the pre-decoded uint8 cache up to date (``write_decoded_cache`` skips fresh splits itself)."""
    from cyclegan_core.data import write_decoded_cache

    path = Path(write_decoded_cache(root, load_size=load_size)).resolve()
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return manifest.model_copy(update={"decoded_cache": DecodedCacheInfo(path=rel, load_size=load_size)})


# --- upload --------------------------------------------------------------------------------------


def md5_hex(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def multipart_etag(path: Path, part_size: int) -> str:
    """The ETag S3 gives a multipart upload of ``path`` in ``part_size`` parts: md5(part md5s)-N."""
    digests = []
    with path.open("rb") as handle:
        while chunk := handle.read(part_size):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def etag_matches(path: Path, size: int, remote_etag: str) -> bool:
    """Whether the local file has the content the remote ETag describes (single or multipart)."""
    etag = remote_etag.strip('"')
    if "-" not in etag:
        return md5_hex(path) == etag
    parts = int(etag.rsplit("-", 1)[1]) if etag.rsplit("-", 1)[1].isdigit() else 0
    if parts < 1:
        return False
    return any(multipart_etag(path, p) == etag for p in part_size_candidates(size, parts))


def part_size_candidates(size: int, parts: int, *, limit: int = 16) -> list[int]:
    """Part sizes that split ``size`` bytes into ``parts`` parts: common tool defaults, then (when few)
    every whole MiB in range, since tools choose whole MiB."""
    if parts == 1:
        return [max(size, 1)]  # every part size >= size gives the same single part
    mib = 1 << 20
    in_range = range(max(math.ceil(size / parts / mib), 1), (size - 1) // (parts - 1) // mib + 1)
    candidates = [p for p in KNOWN_PART_SIZES if math.ceil(size / p) == parts]
    if len(in_range) <= limit:
        candidates += [m * mib for m in in_range if math.ceil(size / (m * mib)) == parts]
    return sorted(set(candidates))


def iter_local_files(local_dir: Path) -> Iterator[tuple[Path, str]]:
    """Every regular file under ``local_dir`` as ``(path, posix relative path)``, sorted."""
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            yield path, path.relative_to(local_dir).as_posix()


def upload_one(client: Any, bucket: str, key: str, path: Path) -> int:
    """Upload one file (PUT with Content-MD5, or multipart when large); returns the bytes sent."""
    size = path.stat().st_size
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if size >= MULTIPART_THRESHOLD:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
                                max_concurrency=4)
        with_retries(lambda: client.upload_file(str(path), bucket, key, Config=config,
                                                ExtraArgs={"ContentType": content_type}),
                     bucket=bucket, key=key, action="upload")
        return size
    md5 = base64.b64encode(bytes.fromhex(md5_hex(path))).decode()

    def attempt() -> None:
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=md5, ContentType=content_type)

    with_retries(attempt, bucket=bucket, key=key, action="upload")
    return size


def upload_folder(local_dir: str | os.PathLike[str], uri: str, *, max_workers: int = 16,
                  client: Any = None) -> UploadSummary:
    """Upload every file under ``local_dir`` to ``uri`` (keys = prefix + posix relative path), skipping
    objects that already have the same size and ETag."""
    start = time.perf_counter()
    source = Path(local_dir)
    if not source.is_dir():
        raise IngestError(f"cannot upload {source}: not a directory")
    bucket, raw_prefix = parse_s3_uri(uri)
    prefix = normalise_prefix(raw_prefix)
    client = client or make_s3_client(max_pool_connections=max_workers)
    remote = {o.key: o for o in list_objects(client, bucket, prefix, max_workers=max_workers)}
    files = list(iter_local_files(source))

    def sync(item: tuple[Path, str]) -> int:
        path, rel = item
        key = prefix + rel
        existing = remote.get(key)
        if existing is not None and existing.size == path.stat().st_size and \
                etag_matches(path, existing.size, existing.etag):
            return -1
        return upload_one(client, bucket, key, path)

    sent = run_parallel(sync, files, max_workers=max_workers, desc=f"upload {uri}")
    seconds = time.perf_counter() - start
    uploaded = [n for n in sent if n >= 0]
    summary = UploadSummary(uri=uri, local_dir=source, files=len(files), uploaded=len(uploaded),
                            skipped_unchanged=len(files) - len(uploaded), bytes_uploaded=sum(uploaded),
                            seconds=round(seconds, 4),
                            mb_per_s=round(sum(uploaded) / 1e6 / max(seconds, 1e-9), 3))
    log.info("uploaded %s -> %s: %d files sent, %d unchanged, %.1f MB in %.2fs", source, uri, summary.uploaded,
             summary.skipped_unchanged, summary.bytes_uploaded / 1e6, summary.seconds)
    return summary
