"""Data-loader throughput: images/s delivered from raw JPEGs versus the pre-decoded uint8 cache.

Builds (or reuses with ``--dataset``) a folder of N JPEG pairs at 286x286 made from the synthetic
generator's scenes upscaled, then, for each mode, iterates ``UnpairedDataset`` (preprocess
``resize_and_crop``, load 286, random 256 crops, flips) through ``build_dataloader`` with W worker
processes and reports images per second (A and B images both count). One JSON line per mode:

    python benchmarks/data_loader.py --images 200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cyclegan_core.config import DataConfig
from cyclegan_core.data.cache import write_decoded_cache
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.data.synthetic import render_scene, synthetic_mapping

LOAD_SIZE = 286
CROP_SIZE = 256


def make_jpeg_dataset(root: Path, n_images: int, *, seed: int = 0) -> Path:
    """trainA/trainB JPEGs (quality 90) at 286x286: synthetic scenes rendered at 72 px, upscaled."""
    rng = np.random.default_rng(seed)
    for split in ("trainA", "trainB"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            scene = render_scene(rng, 72)
            image = synthetic_mapping(scene) if split == "trainB" else scene
            image.resize((LOAD_SIZE, LOAD_SIZE)).save(root / split / f"{i:05d}.jpg", quality=90)
    return root


def measure(root: Path, *, use_cache: bool, workers: int, batch_size: int, epochs: int) -> dict[str, object]:
    cfg = DataConfig(load_size=LOAD_SIZE, crop_size=CROP_SIZE, use_cache=use_cache, num_workers=workers)
    dataset = UnpairedDataset(root, cfg)
    if use_cache and not dataset.uses_cache:
        raise RuntimeError(f"expected a fresh pre-decoded cache under {root}")
    loader = build_dataloader(dataset, batch_size=batch_size, num_workers=workers)
    loader.sampler.set_epoch(0)
    for _ in loader:  # warm-up epoch: worker start-up, page cache, memory maps
        pass
    images, started = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            images += batch["A"].shape[0] + batch["B"].shape[0]
    seconds = time.perf_counter() - started
    return {
        "benchmark": "data_loader",
        "mode": "decoded_cache" if use_cache else "raw_jpeg",
        "images_per_s": round(images / seconds, 1),
        "images": images,
        "seconds": round(seconds, 2),
        "workers": workers,
        "batch_size": batch_size,
        "dataset_images_per_domain": len(dataset),
        "load_size": LOAD_SIZE,
        "crop_size": CROP_SIZE,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 1),  # other processes competing for the cores
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200, help="JPEGs per domain to generate")
    parser.add_argument(
        "--dataset", type=Path, help="use this folder (trainA/ trainB/) instead of generating"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per mode (after one warm-up)")
    args = parser.parse_args()

    scratch = None
    if args.dataset is None:
        scratch = Path(tempfile.mkdtemp(prefix="cyclegan-bench-"))
        root = make_jpeg_dataset(scratch / "data", args.images)
    else:
        root = args.dataset
    try:
        started = time.perf_counter()
        write_decoded_cache(root, load_size=LOAD_SIZE)
        cache_seconds = time.perf_counter() - started
        for use_cache in (False, True):
            result = measure(
                root,
                use_cache=use_cache,
                workers=args.workers,
                batch_size=args.batch_size,
                epochs=args.epochs,
            )
            if use_cache:
                result["cache_build_seconds"] = round(cache_seconds, 2)
            print(json.dumps(result), flush=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
