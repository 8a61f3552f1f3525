"""Where Ray Train keeps a run's checkpoints: a local path (single node) or ``s3://bucket/prefix``.

S3 goes through ``pyarrow.fs.S3FileSystem`` with the endpoint and region of ``config.services`` and the
driver's AWS credential variables when given (else each process's standard AWS credential chain).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs

from pipelines.config import Services
from pipelines.s3 import DEFAULT_REGION, parse_s3_uri


@dataclass(frozen=True)
class StorageTarget:
    """What RunConfig gets: the path, the filesystem (None = local) and the URI prefix that turns a
    filesystem path back into a user-facing URI ('' for local, 's3://' for S3)."""

    path: str
    filesystem: pyarrow.fs.FileSystem | None
    uri_prefix: str

    def uri(self, fs_path: str) -> str:
        return self.uri_prefix + fs_path


def s3_filesystem(services: Services, *, credentials: Mapping[str, str]) -> pyarrow.fs.S3FileSystem:
    """A pyarrow S3 filesystem on the endpoint and region the pipeline's boto3 clients use.

    ``credentials``: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``(/``AWS_SESSION_TOKEN``) values; they
    travel with the filesystem to Ray Train's controller. Without a key pair, pyarrow falls back to the
    standard chain (profile, instance role) of the process that uses it.
    """
    options: dict[str, Any] = {"region": services.s3_region or DEFAULT_REGION}
    if credentials.get("AWS_ACCESS_KEY_ID") and credentials.get("AWS_SECRET_ACCESS_KEY"):
        options.update(access_key=credentials["AWS_ACCESS_KEY_ID"], secret_key=credentials["AWS_SECRET_ACCESS_KEY"],
                       session_token=credentials.get("AWS_SESSION_TOKEN"))
    if services.s3_endpoint_url:
        endpoint = services.s3_endpoint_url
        # pyarrow wants host[:port] and the scheme separately.
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return pyarrow.fs.S3FileSystem(**options)


def resolve_storage(storage_path: str, services: Services, *,
                    credentials: Mapping[str, str] | None = None) -> StorageTarget:
    """Turn ``run.storage_path`` (an absolute local path or ``s3://bucket/prefix``) into a StorageTarget."""
    if storage_path.startswith("s3://"):
        bucket, prefix = parse_s3_uri(storage_path)
        path = f"{bucket}/{prefix.rstrip('/')}" if prefix.strip("/") else bucket
        return StorageTarget(path=path, filesystem=s3_filesystem(services, credentials=credentials or {}),
                             uri_prefix="s3://")
    if "://" in storage_path:
        raise ValueError(
            f"run.storage_path {storage_path!r} is not supported: use a local path or s3://bucket/prefix"
        )
    if not Path(storage_path).is_absolute():
        raise ValueError(f"run.storage_path {storage_path!r} is relative: pass a config built by resolve()")
    return StorageTarget(path=storage_path, filesystem=None, uri_prefix="")

