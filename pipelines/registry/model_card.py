"""The model card of a registered version: what it was trained on, how it was scored, why it was (not)
promoted, written as version tags (searchable) and as the version's markdown description (pure)."""

from __future__ import annotations

import math
from importlib import metadata

from pipelines.config import ResolvedConfig
from pipelines.records import EvalReport, TrainResult

PACKAGE = "cyclegan-pipeline"
DIRECTIONS = ("AtoB", "BtoA")
TAG_BEST_EPOCH = "best_epoch"
TAG_BASELINE = "primary_metric_baseline"
TAG_CHAMPION_VALUE = "champion_metric_value"
TAG_CODE_VERSION = "code_version"
TAG_FID_PROTOCOL = "fid_protocol"
MAX_TAG_LENGTH = 5000  # MLflow's version tag value limit is 5000 characters


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def code_version(git_sha: str) -> str:
    """``cyclegan-pipeline <version>, git <sha>``."""
    return f"{PACKAGE} {package_version()}, git {git_sha}"


def identity_baseline(metric: str) -> str | None:
    """The untranslated-input baseline of a paired metric (``psnr_AtoB`` -> ``psnr_identity_AtoB``);
    None for a metric without one."""
    for direction in DIRECTIONS:
        suffix = f"_{direction}"
        if metric.endswith(suffix) and "_identity_" not in metric and not metric.startswith("psnr_gain"):
            return f"{metric[: -len(suffix)]}_identity{suffix}"
    return None


def baseline_line(report: EvalReport) -> str:
    """The primary metric's identity baseline with its value ('' when the report has none)."""
    name = identity_baseline(report.primary_metric)
    if name is None or name not in report.metrics:
        return ""
    return f"{name}={report.metrics[name]:.6g} (the untranslated input against the reference)"


def fid_protocol(config: ResolvedConfig, report: EvalReport) -> str:
    """How FID/KID were computed (weights, preprocessing, sample counts), or why they were skipped."""
    skipped = {name: why for name, why in report.skipped.items() if name.startswith(("fid_", "kid_"))}
    if skipped and not any(name.startswith("fid_") for name in report.metrics):
        reasons = sorted(set(skipped.values()))
        return "skipped: " + "; ".join(reasons)
    weights = config.services.inception_weights or "torchvision inception_v3 IMAGENET1K_V1 (local cache)"
    counts = ", ".join(f"{int(report.metrics[f'n_images_{domain}'])} test{domain}"
                       for domain in ("A", "B") if f"n_images_{domain}" in report.metrics)
    return (f"Inception-v3 pool3 features, weights {weights}; 8-bit, bilinear resize to 299x299; translated "
            f"test images against the real other domain ({counts or 'counts unknown'}); KID over "
            f"{config.eval.kid_subsets} subsets of at most {config.eval.kid_subset_size}")


def card_tags(config: ResolvedConfig, train: TrainResult, report: EvalReport, *, git_sha: str) -> dict[str, str]:
    """The model card's tags known at registration (the gate adds its decision and the champion's value)."""
    tags = {
        TAG_BEST_EPOCH: str(train.best_epoch) if train.best_epoch is not None else f"last ({train.epochs})",
        TAG_CODE_VERSION: code_version(git_sha),
        TAG_FID_PROTOCOL: fid_protocol(config, report),
    }
    baseline = baseline_line(report)
    if baseline:
        tags[TAG_BASELINE] = baseline
    for name, why in sorted(report.skipped.items()):
        tags[f"skipped.{name}"] = why
    return {key: value[:MAX_TAG_LENGTH] for key, value in tags.items()}


def format_value(value: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def card_markdown(config: ResolvedConfig, train: TrainResult, report: EvalReport, *, git_sha: str,
                  decision: str, reason: str, champion_value: float | None) -> str:
    """The version's description: one readable card (markdown)."""
    tags = card_tags(config, train, report, git_sha=git_sha)
    lines = [
        f"**CycleGAN** `{config.registry.model_name}`, trained by run `{train.run_name}`",
        "",
        f"- dataset: `{train.dataset_uri}` version `{train.dataset_version}`",
        (f"- training fingerprint: `{train.fingerprint}`; {train.epochs} epochs, {train.steps} steps; "
        f"exported epoch: {tags[TAG_BEST_EPOCH]}"),
        (f"- primary metric: {report.primary_metric}={format_value(report.primary_value)}; baseline: "
        f"{tags.get(TAG_BASELINE, 'none in the report')}; champion's value at the gate: "
        f"{format_value(champion_value)}"),
        f"- gate: {decision} ({reason})",
        f"- code: {tags[TAG_CODE_VERSION]}",
        f"- FID/KID: {tags[TAG_FID_PROTOCOL]}",
    ]
    return "\n".join(lines) + "\n"
