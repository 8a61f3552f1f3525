"""The evaluate stage: Inception weights, the scoring of ``cyclegan_core.evaluation``, artifacts and the EvalReport.

Metrics are computed by ``cyclegan_core.evaluation.evaluate_translator`` (keys and conventions in its
docstring). Inception weights come from ``config.services.inception_weights`` (resolved at the entry
from ``eval.inception_weights`` or ``CYCLEGAN_INCEPTION_WEIGHTS``): a local file, an ``s3://`` URI
(downloaded once into the torch.hub cache, with the S3 endpoint and region of the services) or
``torchvision`` (torchvision's IMAGENET1K_V1 file, downloaded into the torch.hub cache if absent).
With nothing configured, a torchvision file already in the torch.hub cache is used; nothing is
downloaded implicitly. When no weights can be had, FID and KID are listed in ``EvalReport.skipped``
with the reason (and logged).

Artifacts (written atomically into ``out_dir``): ``grid_AtoB.png`` / ``grid_BtoA.png`` (rows: the first
``grid_images`` test images; columns: input | translated | reconstructed) and ``eval_report.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from cyclegan_core.evaluation import evaluate_translator
from cyclegan_core.inception import (
    InceptionFeatureExtractor,
    InceptionWeightsError,
    torchvision_inception_weights,
)
from cyclegan_core.translator import Translator
from pipelines.config import EvalSettings, RegistrySettings, ResolvedConfig
from pipelines.records import DatasetRef, EvalReport

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "CYCLEGAN_INCEPTION_WEIGHTS"  # named in messages; read only by pipelines.config at the entry
TORCHVISION_WEIGHTS = "torchvision"
REPORT_FILE = "eval_report.json"


# --- Inception weights ---------------------------------------------------------------------------


def download_s3_weights(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> Path:
    """Download an ``s3://`` weights file once into the torch.hub cache and return the local path.

    ``endpoint_url`` / ``region``: the services' S3 (None: AWS S3, boto3's region chain). A cached copy
    is reused while its size and the object's ETag are unchanged; the download goes to a temporary file
    renamed into place. S3 failures raise ``pipelines.clients.s3.S3Error`` naming the object.
    """
    from pipelines.clients.s3 import make_s3_client, parse_s3_uri, with_retries

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
    from pipelines.clients.s3 import S3Error

    try:
        weights = resolve_inception_weights(source, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region)
        return InceptionFeatureExtractor.from_weights(weights, device=device), ""
    except (InceptionWeightsError, S3Error, ValueError) as exc:
        logger.warning("FID/KID skipped: %s", exc)
        return None, f"Inception weights unavailable: {exc}"


# --- the stage -----------------------------------------------------------------------------------


def _summary_table(metrics: dict[str, float], skipped: dict[str, str]) -> str:
    width = max(len(k) for k in [*metrics, *skipped])
    lines = [f"  {name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())]
    lines += [f"  {name:<{width}}  SKIPPED ({reason})" for name, reason in sorted(skipped.items())]
    return "\n".join(lines)


def evaluate_generators(
    generators_dir: Path, data_root: Path, out_dir: Path, *, settings: EvalSettings, registry: RegistrySettings,
    inception_weights: str | None = None, s3_endpoint_url: str | None = None, s3_region: str | None = None,
    device: str | torch.device | None = None,
) -> EvalReport:
    """Evaluate the exported model ``generators_dir`` (``G_AB/``, ``G_BA/``) on ``data_root``'s test splits.

    ``inception_weights`` (else ``settings.inception_weights``) names the FID weights; an ``s3://`` one is
    fetched from ``s3_endpoint_url`` / ``s3_region``. Writes the grids and ``eval_report.json`` into
    ``out_dir``. Raises ``ValueError`` when a test split is missing or empty, and when
    ``registry.primary_metric`` was not computed (naming those that were).
    """
    started = time.monotonic()
    generators_dir, data_root, out_dir = Path(generators_dir), Path(data_root), Path(out_dir)
    translator = Translator.from_pretrained(generators_dir, device=device)
    extractor, extractor_reason = load_feature_extractor(
        inception_weights or settings.inception_weights, translator.device,
        s3_endpoint_url=s3_endpoint_url, s3_region=s3_region,
    )
    try:
        evaluation = evaluate_translator(
            translator, data_root, extractor=extractor, extractor_reason=extractor_reason,
            max_images=settings.max_images, batch_size=settings.batch_size, grid_images=settings.grid_images,
            kid_subsets=settings.kid_subsets, kid_subset_size=settings.kid_subset_size,
        )
    except ValueError as exc:
        raise ValueError(f"cannot evaluate {generators_dir}: {exc}") from exc
    metrics, skipped = evaluation.metrics, evaluation.skipped

    primary = registry.primary_metric
    if primary not in metrics:
        why = f" ({skipped[primary]})" if primary in skipped else ""
        raise ValueError(f"primary metric {primary!r} (registry.primary_metric) was not computed{why}; "
                         f"computed metrics: {', '.join(sorted(metrics))}")

    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out_dir)  # what a killed evaluation left
    artifacts: dict[str, Path] = {}
    for direction, image in evaluation.grids.items():
        grid_path = out_dir / f"grid_{direction}.png"
        with atomic_path(grid_path) as tmp:
            image.save(tmp, format="PNG")
        artifacts[f"grid_{direction}"] = grid_path
    artifacts["eval_report"] = out_dir / REPORT_FILE
    report = EvalReport(metrics=metrics, primary_metric=primary, primary_value=metrics[primary], skipped=skipped,
                        artifacts=artifacts)
    with atomic_path(artifacts["eval_report"]) as tmp:
        tmp.write_text(report.model_dump_json(indent=2))
    logger.info("evaluated %s on %s in %.1fs (primary %s = %.4f):\n%s", generators_dir, data_root,
                time.monotonic() - started, primary, metrics[primary], _summary_table(metrics, skipped))
    return report


def evaluate_model(generators_dir: Path, dataset: DatasetRef, config: ResolvedConfig, out_dir: Path) -> EvalReport:
    """The pipeline's evaluate stage: ``evaluate_generators`` on ``dataset.root`` with ``config.eval``,
    ``config.registry`` and the services' Inception weights and S3 endpoint."""
    services = config.services
    return evaluate_generators(generators_dir, dataset.root, out_dir, settings=config.eval, registry=config.registry,
                               inception_weights=services.inception_weights,
                               s3_endpoint_url=services.s3_endpoint_url, s3_region=services.s3_region)
