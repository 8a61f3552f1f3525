"""The evaluate stage: the scoring of ``cyclegan_core.evaluation.scoring``, artifacts and the EvalReport.

Metrics are computed by ``cyclegan_core.evaluation.scoring.evaluate_translator`` (keys and conventions in its
docstring). Inception weights come from ``config.services.inception_weights``
(``pipelines.clients.inception_weights``); when none can be had, FID and KID are listed in
``EvalReport.skipped`` with the reason (and logged).

Artifacts (written atomically into ``out_dir``): ``grid_AtoB.png`` / ``grid_BtoA.png`` (rows: the first
``grid_images`` test images; columns: input | translated | reconstructed) and ``eval_report.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cyclegan_core.atomic import atomic_path, sweep_stale_temps
from cyclegan_core.evaluation.scoring import evaluate_translator
from cyclegan_core.inference.translator import Translator
from pipelines.clients.inception_weights import load_feature_extractor
from pipelines.config import EvalSettings, RegistrySettings, ResolvedConfig
from pipelines.records import DatasetRef, EvalReport

logger = logging.getLogger(__name__)

REPORT_FILE = "eval_report.json"


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
