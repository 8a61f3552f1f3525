"""A synthetic unpaired domain pair with a known ground-truth translation, for demos and tests.

Scenes: a background with a linear colour gradient and 2 to 5 anti-aliased shapes (ellipses,
rectangles, triangles) in random places, sizes and colours. Every colour of a domain-A scene is WARM:
its HSV hue lies in [8°, 52°] (sand, orange, red, ochre, yellow), with random saturation and value.

The mapping f (``synthetic_mapping``) is a per-pixel function of 8-bit RGB, computed exactly in integers:

    f(r, g, b) = (b, r + b - g, r)   if r >= g >= b   (hue in [0°, 60°]: reds, oranges, yellows)
    f(r, g, b) = (r, g, b)           otherwise

On a warm pixel (max = r, min = b) this is ``c -> max + min - c`` per channel: the complementary hue
(rotated by 180°) with the SAME HSV saturation and value, so a sand background becomes a sky blue and
an orange disc a blue one; outputs satisfy b >= g >= r (hue in [180°, 240°]). Pixels outside the warm
band (which domain-A scenes never contain) are left alone, so f is the identity on domain B's colours:
the CycleGAN identity loss is consistent with the true mapping, and G_BA's ideal is the same formula
with the roles of r and b swapped. Anti-aliased edges and the BOX downsampling are convex
combinations of warm colours, which stay warm (r >= g >= b is preserved by averaging), and hues are
kept 8° away from the band edges 0° and 60° where f is discontinuous.

Splits (PNG, lossless): ``trainA``, ``trainB``, ``testA``, ``testB`` and ``testA_ref = f(testA)``
(same file names as ``testA``). Domain B images are f applied to scenes drawn from a DIFFERENT random
stream than domain A's, so the training data are genuinely unpaired. ``testA_ref`` is the paired
ground truth for PSNR/SSIM: the identity translation scores about 9-10 dB on it at the default
settings (the exact value is written to ``synthetic.json``), while f itself scores infinity.
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from cyclegan_core.atomic import owned_temp, replace_folder, sweep_stale_temps

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("trainA", "trainB", "testA", "testB")
REFERENCE_SPLIT = "testA_ref"
HUE_RANGE_DEG = (8.0, 52.0)
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges
_SPLIT_STREAM = {"trainA": 0, "trainB": 1, "testA": 2, "testB": 3}


def synthetic_mapping(image_A: Image.Image) -> Image.Image:
    """The ground-truth translation f from domain A to domain B (see the module docstring)."""
    rgb = np.asarray(image_A.convert("RGB"), dtype=np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    warm = (r >= g) & (g >= b)
    mapped = np.stack([b, r + b - g, r], axis=-1)
    out = np.where(warm[..., None], mapped, rgb)
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


def make_synthetic_dataset(
    dest: str | os.PathLike[str],
    *,
    size: int = 64,
    n_train: int = 400,
    n_test: int = 50,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic pair under ``dest`` (atomically: built in a sibling temp folder, then renamed).

    Refuses to replace a non-empty ``dest`` unless ``overwrite``. Returns ``dest`` as a Path.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got n_train={n_train}, n_test={n_test}")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder; choose another destination")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")

    sweep_stale_temps(dest.parent, name=dest.name)
    with owned_temp(dest.parent, dest.name, folder=True) as tmp:
        counts = {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test}
        for split in SPLITS:
            _write_split(tmp, split, counts[split], size=size, seed=seed)
        _write_reference(tmp)
        identity = identity_psnr(tmp)
        metadata = {
            "generator": "cyclegan_core.data.synthetic",
            "size": size,
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "mapping": "f(r,g,b) = (b, r+b-g, r) if r >= g >= b else (r,g,b)",
            "identity_psnr_testA_ref_db": round(identity, 3),
        }
        (tmp / "synthetic.json").write_text(json.dumps(metadata, indent=2) + "\n")
        replace_folder(tmp, dest)
    logger.info(
        "wrote synthetic dataset %s (%d px, %d train / %d test per domain, identity PSNR %.2f dB)",
        dest,
        size,
        n_train,
        n_test,
        identity,
    )
    return dest


def identity_psnr(root: str | os.PathLike[str]) -> float:
    """PSNR (dB, 8-bit peak) of testA against testA_ref: the score of doing nothing."""
    root = Path(root)
    squared_error, count = 0.0, 0
    for ref_path in sorted((root / REFERENCE_SPLIT).glob("*.png")):
        with Image.open(root / "testA" / ref_path.name) as a, Image.open(ref_path) as ref:
            diff = np.asarray(a.convert("RGB"), np.float64) - np.asarray(ref.convert("RGB"), np.float64)
        squared_error += float((diff**2).sum())
        count += diff.size
    if count == 0:
        raise FileNotFoundError(f"no PNG images in {root / REFERENCE_SPLIT}")
    mse = squared_error / count
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def render_scene(rng: np.random.Generator, size: int) -> Image.Image:
    """One domain-A scene: warm gradient background and 2-5 warm shapes, anti-aliased, ``size``x``size``."""
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(_gradient_background(rng, big), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        colour = _warm_colour(rng, saturation=(0.45, 0.95), value=(0.45, 0.95))
        kind = int(rng.integers(3))
        cx, cy = rng.uniform(0.15, 0.85, size=2) * big
        rx, ry = rng.uniform(0.08, 0.25, size=2) * big
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, size=3)
            radius = max(rx, ry)
            draw.polygon([(cx + radius * np.cos(t), cy + radius * np.sin(t)) for t in angles], fill=colour)
    return canvas.resize((size, size), Image.Resampling.BOX)


def _gradient_background(rng: np.random.Generator, big: int) -> np.ndarray:
    start = np.array(_warm_colour(rng, saturation=(0.2, 0.55), value=(0.7, 0.97)), dtype=np.float64)
    end = np.array(_warm_colour(rng, saturation=(0.2, 0.55), value=(0.7, 0.97)), dtype=np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(-0.5, 0.5, big)
    t = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    # interpolating two warm colours keeps r >= g >= b; rounding is monotone so it keeps it too
    return np.rint(start + t[..., None] * (end - start)).astype(np.uint8)


def _warm_colour(
    rng: np.random.Generator, *, saturation: tuple[float, float], value: tuple[float, float]
) -> tuple[int, int, int]:
    hue = rng.uniform(*HUE_RANGE_DEG) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value))
    return round(r * 255), round(g * 255), round(b * 255)


def _write_split(root: Path, split: str, count: int, *, size: int, seed: int) -> None:
    folder = root / split
    folder.mkdir(parents=True)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    for index in tqdm(range(count), desc=f"synth {split}", unit="img", leave=False, disable=count < 200):
        scene = render_scene(rng, size)
        image = synthetic_mapping(scene) if split.endswith("B") else scene
        image.save(folder / f"{index:05d}.png")


def _write_reference(root: Path) -> None:
    folder = root / REFERENCE_SPLIT
    folder.mkdir()
    for path in sorted((root / "testA").glob("*.png")):
        with Image.open(path) as scene:
            synthetic_mapping(scene).save(folder / path.name)
