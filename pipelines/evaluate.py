"""The evaluate stage: score exported generators G_AB / G_BA on a dataset's test splits.

For each direction (AtoB: testA -> G_AB -> G_BA, BtoA: testB -> G_BA -> G_AB) it computes, at each
test image's native size (``translate_tensor`` pads to the generator's size multiple and crops back):

- ``cycle_l1_A`` / ``cycle_l1_B``: mean |G_BA(G_AB(a)) - a| (and the B analogue), [-1, 1] units;
- paired metrics when ``testA_ref/`` (``testB_ref/``) holds the ground-truth translation under the same
  file names (the synthetic dataset has one): ``psnr_AtoB``, ``ssim_AtoB``, ``l1_AtoB``, the identity
  baseline ``*_identity_AtoB`` (the untranslated input against the reference) and
  ``psnr_gain_AtoB = psnr_AtoB - psnr_identity_AtoB``;
- ``fid_AtoB`` / ``kid_AtoB`` (+ ``kid_AtoB_std``): G_AB(testA) against the real testB, and the BtoA
  analogues, with Inception-v3 pool3 features (conventions in ``cyclegan_core.metrics``);
- ``n_images_A`` / ``n_images_B``: how many test images were scored.

Every per-image value (PSNR included) is averaged over the images of its split.

Inception weights come from ``EvalSettings.inception_weights``, else ``CYCLEGAN_INCEPTION_WEIGHTS``: a
local file, an ``s3://`` URI (downloaded once into the torch.hub cache) or ``torchvision`` (torchvision's
IMAGENET1K_V1 file, downloaded into the torch.hub cache if absent). With nothing configured, a
torchvision file already in the torch.hub cache is used; nothing is downloaded implicitly. When no
weights can be had, FID and KID are listed in ``EvalReport.skipped`` with the reason (and logged).

Artifacts (written atomically into ``out_dir``): ``grid_AtoB.png`` / ``grid_BtoA.png`` (rows: the first
``grid_images`` test images; columns: input | translated | reconstructed) and ``eval_report.json``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.utils import make_grid
from tqdm import tqdm

from cyclegan_core.atomic import atomic_path
from cyclegan_core.export import load_generator
from cyclegan_core.images import InvalidImage, decode_image, list_images
from cyclegan_core.metrics import (
    InceptionFeatureExtractor,
    InceptionWeightsError,
    fid_from_features,
    kid_from_features,
    l1,
    psnr,
    ssim,
    to_unit_range,
    torchvision_inception_weights,
)
from cyclegan_core.networks import size_multiple
from cyclegan_core.translate import pil_to_tensor, translate_tensor
from pipelines.config import EvalSettings, PipelineConfig, RegistrySettings
from pipelines.records import DatasetRef, EvalReport

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "CYCLEGAN_INCEPTION_WEIGHTS"
TORCHVISION_WEIGHTS = "torchvision"
REPORT_FILE = "eval_report.json"
DIRECTIONS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}  # direction -> (source domain, target domain)
OPPOSITE = {"AtoB": "BtoA", "BtoA": "AtoB"}


# --- Inception weights ---------------------------------------------------------------------------


def download_s3_weights(uri: str) -> Path:
    """Download an ``s3://`` weights file once into the torch.hub cache and return the local path.

    A cached copy is reused while its size and the object's ETag are unchanged; the download goes to a
    temporary file renamed into place. S3 failures raise ``pipelines.s3.S3Error`` naming the object.
    """
    from pipelines.s3 import make_s3_client, parse_s3_uri, with_retries

    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"Inception weights URI {uri!r} must name an object, not a bucket or prefix")
    client = make_s3_client()
    head = with_retries(lambda: client.head_object(Bucket=bucket, Key=key), bucket=bucket, key=key, action="stat")
    etag = str(head.get("ETag", "")).strip('"')
    target = Path(torch.hub.get_dir()) / "checkpoints" / "s3" / bucket / key
    etag_file = target.with_name(target.name + ".etag")
    if (target.is_file() and target.stat().st_size == head["ContentLength"] and etag_file.is_file()
            and etag_file.read_text() == etag):
        logger.info("using cached copy %s of %s", target, uri)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        with_retries(lambda: client.download_file(bucket, key, str(tmp)), bucket=bucket, key=key,
                     action="download")
    with atomic_path(etag_file) as tmp:
        tmp.write_text(etag)
    logger.info("downloaded %s to %s", uri, target)
    return target


def resolve_inception_weights(setting: str | None) -> Path:
    """Local file of the Inception weights named by ``setting`` (or ``CYCLEGAN_INCEPTION_WEIGHTS``).

    Raises ``InceptionWeightsError`` (or ``S3Error`` / ``ValueError`` for a bad ``s3://`` source) with
    the reason when none is available.
    """
    source = setting or os.environ.get(WEIGHTS_ENV) or None
    if source is None:
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
        return download_s3_weights(source)
    return Path(source).expanduser()


def load_feature_extractor(setting: str | None, device: torch.device) -> tuple[InceptionFeatureExtractor | None, str]:
    """The Inception feature extractor, or ``(None, reason)`` when its weights are unavailable."""
    from pipelines.s3 import S3Error

    try:
        return InceptionFeatureExtractor.from_weights(resolve_inception_weights(setting), device=device), ""
    except (InceptionWeightsError, S3Error, ValueError) as exc:
        logger.warning("FID/KID skipped: %s", exc)
        return None, f"Inception weights unavailable: {exc}"


# --- test images ---------------------------------------------------------------------------------


def _load_images(paths: list[Path]) -> Iterator[tuple[Path, torch.Tensor]]:
    """Decode each path to a 3 x H x W tensor in [-1, 1]; unreadable files are logged and skipped."""
    for path in paths:
        try:
            yield path, pil_to_tensor(decode_image(path))
        except InvalidImage as exc:
            logger.warning("skipping unreadable test image: %s", exc)


def same_size_batches(paths: list[Path], batch_size: int) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Batches of up to ``batch_size`` consecutive images of one size, in file order."""
    names: list[Path] = []
    tensors: list[torch.Tensor] = []
    for path, tensor in _load_images(paths):
        if tensors and (len(tensors) == batch_size or tensor.shape != tensors[0].shape):
            yield names, torch.stack(tensors)
            names, tensors = [], []
        names.append(path)
        tensors.append(tensor)
    if tensors:
        yield names, torch.stack(tensors)


def _load_references(names: list[Path], ref_dir: Path, like: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
    """Indices of the batch with a usable reference (same file name and size) and those references."""
    indices, refs = [], []
    for index, name in enumerate(names):
        ref_path = ref_dir / name.name
        try:
            ref = pil_to_tensor(decode_image(ref_path))
        except InvalidImage as exc:
            logger.warning("no usable reference for %s: %s", name.name, exc)
            continue
        if ref.shape != like.shape[1:]:
            logger.warning("reference %s is %s, its input %s is %s: not compared", ref_path, tuple(ref.shape),
                           name, tuple(like.shape[1:]))
            continue
        indices.append(index)
        refs.append(ref)
    return indices, (torch.stack(refs) if refs else None)


# --- one direction -------------------------------------------------------------------------------


@dataclass
class DirectionResult:
    """Per-image values of one direction (source -> translated -> reconstructed)."""

    n_images: int = 0
    cycle_l1: list[torch.Tensor] = field(default_factory=list)
    paired: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    source_features: list[torch.Tensor] = field(default_factory=list)
    translated_features: list[torch.Tensor] = field(default_factory=list)
    grid_rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def run_direction(
    forward: nn.Module, forward_multiple: int, backward: nn.Module, backward_multiple: int,
    paths: list[Path], *, ref_dir: Path | None, extractor: InceptionFeatureExtractor | None,
    batch_size: int, grid_images: int, device: torch.device, label: str,
) -> DirectionResult:
    """Translate ``paths`` with ``forward``, reconstruct with ``backward`` and collect per-image values."""
    result = DirectionResult()
    for names, source in tqdm(same_size_batches(paths, batch_size), desc=f"evaluate {label}", unit="batch",
                              total=-(-len(paths) // batch_size), leave=False):
        source = source.to(device)
        # fp32 even on CUDA: metrics should not move with the autocast dtype
        translated = translate_tensor(forward, source, multiple=forward_multiple, batch_size=batch_size,
                                      precision="fp32")
        reconstructed = translate_tensor(backward, translated, multiple=backward_multiple, batch_size=batch_size,
                                         precision="fp32")
        result.n_images += len(names)
        result.cycle_l1.append(l1(reconstructed, source).cpu())
        if ref_dir is not None:
            indices, refs = _load_references(names, ref_dir, source)
            if refs is not None:
                refs, picked = refs.to(device), torch.tensor(indices, device=device)
                for infix, images in (("", translated[picked]), ("_identity", source[picked])):
                    for metric, fn in (("psnr", psnr), ("ssim", ssim), ("l1", l1)):
                        result.paired.setdefault(metric + infix, []).append(fn(images, refs).cpu())
        if extractor is not None:
            result.source_features.append(extractor(source).cpu())
            result.translated_features.append(extractor(translated).cpu())
        for row in zip(source, translated, reconstructed):
            if len(result.grid_rows) == grid_images:
                break
            result.grid_rows.append((row[0].cpu(), row[1].cpu(), row[2].cpu()))
    return result


def _mean(values: list[torch.Tensor]) -> float:
    return float(torch.cat(values).double().mean())


# --- artifacts -----------------------------------------------------------------------------------


def sample_grid(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Image.Image:
    """Rows of input | translated | reconstructed as one image (2 px white padding, torchvision layout).

    Rows of another size than the first are resized (bilinear) to it, for display only.
    """
    height, width = rows[0][0].shape[-2:]
    tiles = []
    for row in rows:
        for image in row:
            tile = to_unit_range(image)
            if tile.shape[-2:] != (height, width):
                tile = F.interpolate(tile[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            tiles.append(tile)
    grid = make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)
    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


# --- the stage -----------------------------------------------------------------------------------


def _direction_metrics(direction: str, result: DirectionResult, real_target_features: list[torch.Tensor],
                       settings: EvalSettings, extractor_reason: str,
                       metrics: dict[str, float], skipped: dict[str, str]) -> None:
    source, target = DIRECTIONS[direction]
    metrics[f"n_images_{source}"] = float(result.n_images)
    metrics[f"cycle_l1_{source}"] = _mean(result.cycle_l1)
    if result.paired:
        for name, values in result.paired.items():
            metrics[f"{name}_{direction}"] = _mean(values)
        metrics[f"psnr_gain_{direction}"] = metrics[f"psnr_{direction}"] - metrics[f"psnr_identity_{direction}"]
    fid_key, kid_key = f"fid_{direction}", f"kid_{direction}"
    if extractor_reason:
        skipped[fid_key] = skipped[kid_key] = extractor_reason
        return
    fake, real = torch.cat(result.translated_features), torch.cat(real_target_features)
    if min(len(fake), len(real)) < 2:
        skipped[fid_key] = skipped[kid_key] = (
            f"needs at least 2 images per set, have {len(fake)} translated and {len(real)} real test{target}"
        )
        return
    metrics[fid_key] = fid_from_features(fake, real)
    metrics[kid_key], metrics[f"{kid_key}_std"] = kid_from_features(
        fake, real, subsets=settings.kid_subsets, subset_size=settings.kid_subset_size
    )


def _summary_table(metrics: dict[str, float], skipped: dict[str, str]) -> str:
    width = max(len(k) for k in [*metrics, *skipped])
    lines = [f"  {name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())]
    lines += [f"  {name:<{width}}  SKIPPED ({reason})" for name, reason in sorted(skipped.items())]
    return "\n".join(lines)


def evaluate_generators(
    generators_dir: Path, data_root: Path, out_dir: Path, *,
    settings: EvalSettings, registry: RegistrySettings, device: str | torch.device | None = None,
) -> EvalReport:
    """Evaluate the exported model ``generators_dir`` (``G_AB/``, ``G_BA/``) on ``data_root``'s test splits.

    Writes the grids and ``eval_report.json`` into ``out_dir``. Raises ``ValueError`` when a test split
    is missing or empty, and when ``registry.primary_metric`` was not computed (naming those that were).
    """
    started = time.monotonic()
    generators_dir, data_root, out_dir = Path(generators_dir), Path(data_root), Path(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nets = {}
    for direction in DIRECTIONS:
        net, cfg = load_generator(generators_dir, device=device, direction=direction)
        if cfg.input_nc != 3 or cfg.output_nc != 3:
            raise ValueError(f"{generators_dir} ({direction}): evaluation needs RGB generators, the model "
                             f"has input_nc={cfg.input_nc}, output_nc={cfg.output_nc}")
        nets[direction] = (net, size_multiple(cfg.generator))
    test_paths = {}
    for domain in ("A", "B"):
        folder = data_root / f"test{domain}"
        paths = list_images(folder) if folder.is_dir() else []
        if not paths:
            raise ValueError(f"{folder} holds no test images: evaluation needs test{domain}/ with images")
        test_paths[domain] = paths[: settings.max_images]
    extractor, extractor_reason = load_feature_extractor(settings.inception_weights, device)

    results: dict[str, DirectionResult] = {}
    for direction, (source, _) in DIRECTIONS.items():
        ref_dir = data_root / f"test{source}_ref"
        (forward, forward_multiple), (backward, backward_multiple) = nets[direction], nets[OPPOSITE[direction]]
        results[direction] = run_direction(
            forward, forward_multiple, backward, backward_multiple, test_paths[source],
            ref_dir=ref_dir if ref_dir.is_dir() else None, extractor=extractor,
            batch_size=settings.batch_size, grid_images=settings.grid_images, device=device, label=direction,
        )
        if results[direction].n_images == 0:
            raise ValueError(f"no readable image in {data_root / f'test{source}'} (see the warnings above)")

    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for direction, (source, _) in DIRECTIONS.items():
        _direction_metrics(direction, results[direction], results[OPPOSITE[direction]].source_features, settings,
                           extractor_reason, metrics, skipped)
        if not results[direction].paired and (data_root / f"test{source}_ref").is_dir():
            skipped[f"psnr_{direction}"] = f"no test{source}_ref/ image matches a test{source}/ image by name and size"

    primary = registry.primary_metric
    if primary not in metrics:
        why = f" ({skipped[primary]})" if primary in skipped else ""
        raise ValueError(f"primary metric {primary!r} (registry.primary_metric) was not computed{why}; "
                         f"computed metrics: {', '.join(sorted(metrics))}")

    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Path] = {}
    for direction, result in results.items():
        grid_path = out_dir / f"grid_{direction}.png"
        image = sample_grid(result.grid_rows)
        with atomic_path(grid_path) as tmp:
            image.save(tmp, format="PNG")
        artifacts[f"grid_{direction}"] = grid_path
    artifacts["eval_report"] = out_dir / REPORT_FILE
    report = EvalReport(metrics=metrics, primary_metric=primary, primary_value=metrics[primary],
                        higher_is_better=registry.higher_is_better, skipped=skipped, artifacts=artifacts)
    with atomic_path(artifacts["eval_report"]) as tmp:
        tmp.write_text(report.model_dump_json(indent=2))
    logger.info("evaluated %s on %s in %.1fs (primary %s = %.4f):\n%s", generators_dir, data_root,
                time.monotonic() - started, primary, metrics[primary], _summary_table(metrics, skipped))
    return report


def evaluate_model(generators_dir: Path, dataset: DatasetRef, config: PipelineConfig, out_dir: Path) -> EvalReport:
    """The pipeline's evaluate stage: ``evaluate_generators`` on ``dataset.root`` with ``config.eval`` and
    ``config.registry``."""
    return evaluate_generators(generators_dir, dataset.root, out_dir, settings=config.eval,
                               registry=config.registry)
