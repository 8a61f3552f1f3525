"""Where batch translation reads and writes: an ``s3://bucket/prefix`` or a local folder, behind one interface.

A ``Location`` is the picklable description (URI, bucket/prefix or folder, endpoint and region: never
credentials); ``open_store`` turns it into a ``Store`` in the process that uses it, which builds its own
boto3 client from its node's standard AWS chain. S3 PUTs of whole objects are atomic; local files are
written to an owned temporary and renamed (``cyclegan_core.atomic``), so no reader sees half an object.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from pipelines.clients.s3 import list_level, make_s3_client, parse_s3_uri, with_retries


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing: its path relative to the location, size and content tag (S3 ETag, or
    the MD5 of a local file: the ETag of a single-part upload)."""

    rel: str
    size: int
    etag: str


@dataclass(frozen=True)
class Location:
    """An S3 prefix (``bucket`` set) or a local folder (``root``); ``prefix`` has no slashes at its ends."""

    uri: str
    bucket: str | None = None
    prefix: str = ""
    root: str | None = None
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def child(self, rel: str) -> Location:
        """The location ``rel`` (a relative path with ``/``) below this one."""
        rel = rel.strip("/")
        if self.is_s3:
            prefix = f"{self.prefix}/{rel}" if self.prefix else rel
            return Location(f"s3://{self.bucket}/{prefix}", bucket=self.bucket, prefix=prefix,
                            endpoint_url=self.endpoint_url, region=self.region)
        root = str(Path(self.root or ".") / rel)
        return Location(root, root=root)

    def object_uri(self, rel: str) -> str:
        return self.child(rel).uri

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this location or lies below it."""
        if self.is_s3 != other.is_s3:
            return False
        if self.is_s3:
            return self.bucket == other.bucket and (not self.prefix or other.prefix == self.prefix
                                                    or other.prefix.startswith(self.prefix + "/"))
        mine, theirs = Path(self.root or "."), Path(other.root or ".")
        return theirs == mine or mine in theirs.parents


def parse_location(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> Location:
    """``s3://bucket/prefix`` or a local folder path (made absolute). Raises ValueError for a bad S3 URI."""
    if uri.startswith("s3://"):
        bucket, prefix = parse_s3_uri(uri)
        prefix = prefix.strip("/")
        return Location(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", bucket=bucket, prefix=prefix,
                        endpoint_url=endpoint_url, region=region)
    if "://" in uri:
        raise ValueError(f"{uri!r}: expected s3://bucket/prefix or a local folder")
    root = str(Path(uri).expanduser().resolve())
    return Location(root, root=root)


class Store(Protocol):
    location: Location

    def list(self, under: str = "") -> list[StoredObject]: ...
    def read(self, rel: str) -> bytes: ...
    def write(self, rel: str, data: bytes, *, metadata: dict[str, str] | None = None,
              content_type: str = "application/octet-stream") -> None: ...
    def delete(self, rel: str) -> None: ...


class S3Store:
    """A prefix of a bucket, through one boto3 client (retries on transient errors, ``S3Error`` otherwise)."""

    def __init__(self, location: Location, client: Any | None = None) -> None:
        assert location.bucket is not None
        self.location = location
        self.bucket: str = location.bucket
        self.client = client or make_s3_client(endpoint_url=location.endpoint_url, region=location.region)

    def key(self, rel: str) -> str:
        return f"{self.location.prefix}/{rel}" if self.location.prefix else rel

    def list(self, under: str = "") -> list[StoredObject]:
        """Every object below the location (below ``under`` in it: a folder or one object's path)."""
        base = f"{self.location.prefix}/" if self.location.prefix else ""
        objects, _ = list_level(self.client, self.bucket, base + under)
        return sorted((StoredObject(obj.key[len(base):], obj.size, obj.etag.strip('"')) for obj in objects
                       if not obj.key.endswith("/")), key=lambda o: o.rel)

    def read(self, rel: str) -> bytes:
        key = self.key(rel)
        return with_retries(lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
                            bucket=self.bucket, key=key, action="read")

    def write(self, rel: str, data: bytes, *, metadata: dict[str, str] | None = None,
              content_type: str = "application/octet-stream") -> None:
        key = self.key(rel)
        with_retries(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata or {},
                                                    ContentType=content_type),
                     bucket=self.bucket, key=key, action="write")

    def delete(self, rel: str) -> None:
        key = self.key(rel)
        with_retries(lambda: self.client.delete_object(Bucket=self.bucket, Key=key), bucket=self.bucket, key=key,
                     action="delete")


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


class LocalStore:
    """A local folder (readable by every process that opens it: the driver's machine, or a shared mount).
    Files carry no metadata: the ledger and manifest hold what S3 objects carry as metadata."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.root = Path(location.root or ".")

    def list(self, under: str = "") -> list[StoredObject]:
        """Every file below the folder (below ``under`` in it: a folder or one file's path)."""
        start = self.root / under if under else self.root
        if start.is_file():
            return [StoredObject(under, start.stat().st_size, _md5(start))]
        if not start.is_dir():
            return []
        found = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # hidden folders and owned temporaries
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                found.append(StoredObject(path.relative_to(self.root).as_posix(), path.stat().st_size, _md5(path)))
        return sorted(found, key=lambda o: o.rel)

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def write(self, rel: str, data: bytes, *, metadata: dict[str, str] | None = None,
              content_type: str = "application/octet-stream") -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data)

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def sweep(self) -> None:
        """Remove the temporaries a killed writer left anywhere below the folder."""
        if not self.root.is_dir():
            return
        for folder, dirs, _ in os.walk(self.root):
            sweep_stale_temps(folder)
            dirs[:] = [d for d in dirs if not d.startswith(".")]


def open_store(location: Location) -> S3Store | LocalStore:
    """The store of ``location``, in this process (an S3 client from this node's credential chain)."""
    return S3Store(location) if location.is_s3 else LocalStore(location)
