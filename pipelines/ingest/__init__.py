"""Ingest an S3 dataset prefix into a verified local cache (and upload a local folder to S3).

``ingest_dataset(config)`` is what the flow, ``cyclegan train`` and a Ray worker on a node without the
data call; ``ingest_prefix(uri, cache_dir)`` is the same for a bare URI (``cyclegan ingest``). Both
mirror ``prefix/{trainA,trainB,testA,testB,testA_ref}/`` into ``cache_dir/<bucket>/<prefix>/``: list the
prefix (``pipelines.clients.s3``), plan where each key goes (``planning``), keep what the manifest shows
unchanged (``manifest``), fetch and validate the rest in parallel (``download``), sweep files the
bucket no longer has, write the manifest and refresh the pre-decoded training cache
(``cyclegan_core.data.cache.write_decoded_cache``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from pipelines.clients.s3 import list_objects, make_s3_client, parse_s3_uri
from pipelines.ingest.download import (
    fetch_to_staging,
    sweep_dead_temps,
    sweep_stray_files,
    validate_and_place,
)
from pipelines.ingest.manifest import (
    MANIFEST_FILE,
    QUARANTINE_FILE,
    Manifest,
    ManifestEntry,
    check_clean_splits,
    dataset_version,
    load_manifest,
    refresh_decoded_cache,
    split_counts,
    unchanged_objects,
    write_manifest,
)
from pipelines.ingest.planning import (
    SPLITS,
    IngestError,
    Plan,
    PlannedObject,
    UnsafeKey,
    check_required_splits,
    dataset_root,
    normalise_prefix,
    plan_objects,
    safe_relative_key,
)
from pipelines.ingest.upload import UploadSummary, upload_folder
from pipelines.parallel import run_parallel
from pipelines.records import DatasetRef

if TYPE_CHECKING:
    from pipelines.config import ResolvedConfig

__all__ = [
    "MANIFEST_FILE", "QUARANTINE_FILE", "SPLITS", "IngestError", "IngestSummary", "UnsafeKey", "UploadSummary",
    "ingest_dataset", "ingest_prefix", "safe_relative_key", "upload_folder",
]

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
DEFAULT_WORKERS = 16


class IngestSummary(BaseModel):
    """What an ingest did; ``.dataset`` is the record the training stage takes."""

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


def ingest_dataset(config: ResolvedConfig, *, max_workers: int = DEFAULT_WORKERS) -> IngestSummary:
    """Ingest ``config.dataset_uri`` into ``config.cache_dir`` (decoded cache at ``config.data.load_size``)
    through the S3 endpoint and region of ``config.services``."""
    client = make_s3_client(endpoint_url=config.services.s3_endpoint_url, region=config.services.s3_region,
                            max_pool_connections=max_workers)
    return ingest_prefix(config.dataset_uri, config.cache_dir, load_size=config.data.load_size,
                         max_workers=max_workers, client=client)


def ingest_prefix(uri: str, cache_dir: str | os.PathLike[str], *, load_size: int = 286,
                  max_workers: int = DEFAULT_WORKERS, client: Any = None) -> IngestSummary:
    """Mirror and validate an S3 dataset prefix into ``cache_dir/<bucket>/<prefix>`` (module docstring).
    Without ``client``, one with boto3's defaults is made.

    Raises ``IngestError`` (missing/empty train split, unsafe prefix) or ``pipelines.clients.s3.S3Error``
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
    sweep_dead_temps(root)
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
    manifest = Manifest(uri=uri, version=version, objects=entries,
                        decoded_cache=previous.decoded_cache if previous else None)
    if manifest != previous or not (root / QUARANTINE_FILE).is_file():
        write_manifest(root, manifest)
    check_clean_splits(uri, entries, root)

    seconds = time.perf_counter() - start
    bytes_downloaded = sum(e.size for e in fetched)
    cache_start = time.perf_counter()
    refreshed = refresh_decoded_cache(root, manifest, load_size=load_size)
    if refreshed.decoded_cache != manifest.decoded_cache:
        manifest = refreshed
        write_manifest(root, manifest, with_quarantine=False)
    summary = IngestSummary(
        uri=uri, root=root, manifest=manifest_path, version=version, counts=split_counts(entries),
        listed=len(plan.objects) + len(plan.rejected) + plan.ignored, downloaded=len(fetched),
        skipped_unchanged=len(kept), removed=removed, ignored=plan.ignored,
        quarantined=[(e.key, e.reason) for e in entries if e.status == "quarantined"],
        rejected_keys=plan.rejected, bytes_downloaded=bytes_downloaded, seconds=round(seconds, 4),
        mb_per_s=round(bytes_downloaded / 1e6 / max(seconds, 1e-9), 3),
        decoded_cache=root / manifest.decoded_cache.path if manifest.decoded_cache else None,
        cache_seconds=round(time.perf_counter() - cache_start, 4),
    )
    log.info(summary.one_line())
    return summary
