"""The Inception-v3 weights files of FID/KID, named by ``config.services.inception_weights`` (resolved at
the entry from ``eval.inception_weights`` or ``CYCLEGAN_INCEPTION_WEIGHTS``): a local file, an ``s3://``
URI (downloaded once into the torch.hub cache, with the S3 endpoint and region of the services) or
``torchvision`` (torchvision's IMAGENET1K_V1 file, downloaded into the torch.hub cache if absent).
With nothing configured, a torchvision file already in the torch.hub cache is used; nothing is
downloaded implicitly. Used by the evaluate stage and by evaluation during training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from cyclegan_core.evaluation.inception import (
    InceptionFeatureExtractor,
    InceptionWeightsError,
    torchvision_inception_weights,
)
from pipelines.clients.s3 import S3Error, make_s3_client, parse_s3_uri, with_retries

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "CYCLEGAN_INCEPTION_WEIGHTS"  # named in messages; read only by pipelines.config at the entry
TORCHVISION_WEIGHTS = "torchvision"


def download_s3_weights(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> Path:
    """Download an ``s3://`` weights file once into the torch.hub cache and return the local path.

    ``endpoint_url`` / ``region``: the services' S3 (None: AWS S3, boto3's region chain). A cached copy
    is reused while its size and the object's ETag are unchanged; the download goes to a temporary file
    renamed into place. S3 failures raise ``pipelines.clients.s3.S3Error`` naming the object.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"Inception weights URI {uri!r} must name an object, not a bucket or prefix")
    client = make_s3_client(endpoint_url=endpoint_url, region=region)
    head = with_retries(lambda: client.head_object(Bucket=bucket, Key=key), bucket=bucket, key=key, action="stat")
    etag = str(head.get("ETag", "")).strip('"')
    target = Path(torch.hub.get_dir()) / "checkpoints" / "s3" / bucket / key
    etag_file = target.with_name(target.name + ".etag")
    if (target.is_file() and target.stat().st_size == head["ContentLength"] and etag_file.is_file()
            and etag_file.read_text() == etag):
        logger.info("using cached copy %s of %s", target, uri)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)  # what a killed download left
    with atomic_path(target) as tmp:
        with_retries(lambda: client.download_file(bucket, key, str(tmp)), bucket=bucket, key=key,
                     action="download")
    with atomic_path(etag_file) as tmp:
        tmp.write_text(etag)
    logger.info("downloaded %s to %s", uri, target)
    return target


def resolve_inception_weights(source: str | None, *, s3_endpoint_url: str | None = None,
                              s3_region: str | None = None) -> Path:
    """Local file of the Inception weights named by ``source`` (a file, ``s3://`` URI or ``torchvision``;
    None: torchvision's file if it is in the torch.hub cache).

    Raises ``InceptionWeightsError`` (or ``S3Error`` / ``ValueError`` for a bad ``s3://`` source) with
    the reason when none is available.
    """
    if not source:
        try:
            return torchvision_inception_weights(download=False)
        except InceptionWeightsError as exc:
            raise InceptionWeightsError(
                exc.path, f"no Inception weights configured (set eval.inception_weights or {WEIGHTS_ENV} to a "
                          f"file, an s3:// URI, or '{TORCHVISION_WEIGHTS}' to download torchvision's) and none "
                          "in the torch.hub cache"
            ) from exc
    if source == TORCHVISION_WEIGHTS:
        return torchvision_inception_weights(download=True)
    if source.startswith("s3://"):
        return download_s3_weights(source, endpoint_url=s3_endpoint_url, region=s3_region)
    return Path(source).expanduser()


def load_feature_extractor(source: str | None, device: torch.device, *, s3_endpoint_url: str | None = None,
                           s3_region: str | None = None) -> tuple[InceptionFeatureExtractor | None, str]:
    """The Inception feature extractor, or ``(None, reason)`` when its weights are unavailable."""
    try:
        weights = resolve_inception_weights(source, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region)
        return InceptionFeatureExtractor.from_weights(weights, device=device), ""
    except (InceptionWeightsError, S3Error, ValueError) as exc:
        logger.warning("FID/KID skipped: %s", exc)
        return None, f"Inception weights unavailable: {exc}"
