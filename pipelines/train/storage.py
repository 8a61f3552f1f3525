"""Where Ray Train keeps a run's checkpoints: a local path (single node) or ``s3://bucket/prefix``.

S3 goes through ``pyarrow.fs.S3FileSystem`` with the endpoint and region of ``config.services`` and no
credentials: each process that uses it (the driver, Ray Train's controller, the workers) finds its own
in its node's standard AWS chain, so no key travels with the filesystem Ray pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs

from pipelines.clients.s3 import DEFAULT_REGION, parse_s3_uri
from pipelines.config import Services


@dataclass(frozen=True)
class StorageTarget:
    """What RunConfig gets: the path, the filesystem (None = local) and the URI prefix that turns a
    filesystem path back into a user-facing URI ('' for local, 's3://' for S3)."""

    path: str
    filesystem: pyarrow.fs.FileSystem | None
    uri_prefix: str

    def uri(self, fs_path: str) -> str:
        return self.uri_prefix + fs_path


def s3_filesystem(services: Services) -> pyarrow.fs.S3FileSystem:
    """A pyarrow S3 filesystem on the endpoint and region the pipeline's boto3 clients use, with the
    default credential chain of whichever process uses it (pickled, it carries no key)."""
    options: dict[str, Any] = {"region": services.s3_region or DEFAULT_REGION}
    if services.s3_endpoint_url:
        endpoint = services.s3_endpoint_url
        # pyarrow wants host[:port] and the scheme separately.
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return pyarrow.fs.S3FileSystem(**options)


def resolve_storage(storage_path: str, services: Services) -> StorageTarget:
    """Turn ``run.storage_path`` (an absolute local path or ``s3://bucket/prefix``) into a StorageTarget."""
    if storage_path.startswith("s3://"):
        bucket, prefix = parse_s3_uri(storage_path)
        path = f"{bucket}/{prefix.rstrip('/')}" if prefix.strip("/") else bucket
        return StorageTarget(path=path, filesystem=s3_filesystem(services), uri_prefix="s3://")
    if "://" in storage_path:
        raise ValueError(
            f"run.storage_path {storage_path!r} is not supported: use a local path or s3://bucket/prefix"
        )
    if not Path(storage_path).is_absolute():
        raise ValueError(f"run.storage_path {storage_path!r} is relative: pass a config built by resolve()")
    return StorageTarget(path=storage_path, filesystem=None, uri_prefix="")

