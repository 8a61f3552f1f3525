"""Upload a local folder to an S3 prefix, skipping objects whose size and ETag already match."""

from __future__ import annotations

import base64
import logging
import mimetypes
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from pydantic import BaseModel

from pipelines.clients.s3 import (
    etag_matches,
    list_objects,
    make_s3_client,
    md5_hex,
    parse_s3_uri,
    with_retries,
)
from pipelines.ingest.planning import IngestError, normalise_prefix
from pipelines.parallel import run_parallel

log = logging.getLogger(__name__)

# Objects up to this size go in one PUT (ETag = MD5); larger ones are multipart.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


class UploadSummary(BaseModel):
    uri: str
    local_dir: Path
    files: int
    uploaded: int
    skipped_unchanged: int
    bytes_uploaded: int
    seconds: float
    mb_per_s: float


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
    objects that already have the same size and ETag. Without ``client``, boto3's defaults are used."""
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
