"""Images/s of the real training loop fed from the pre-decoded cache: in process and through Ray Train.

``train_step.py`` times the step on tensors already on the device; this benchmark adds what a training
run pays on top of it:

1. writes the synthetic domain pair (``cyclegan_core.data.synthetic``) at ``--image-size`` with ``--images``
   per train domain and its pre-decoded uint8 cache at ``--load-size`` (as ingestion does);
2. ``in_process``: ``UnpairedDataset`` (cache) -> ``build_dataloader`` (``--loader-workers`` processes,
   pinned memory on CUDA) -> ``cyclegan_core.training.fit.fit``, for ``--epochs`` epochs;
3. with ``--ray``: the same configuration through ``pipelines.train.train_on_ray`` with one worker
   (one GPU when CUDA is available) on a local Ray, whose worker runs the same ``fit``, plus Ray's
   per-epoch report and the final checkpoint.

The first epoch of each mode is warm-up (cuDNN autotuning, loader start) and is not averaged. Prints one
JSON line per mode and, with ``--ray``, a ``comparison`` line with ``ray_overhead = 1 - ray / in_process``
images/s (issue goal: under 5%) and Ray's fixed cost (wall time not spent in epochs)::

    python benchmarks/train_loop.py --size 256 --batch 1 --images 500 --epochs 3 --ray
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# this folder is sys.path[0] when a script runs
from train_step import add_model_arguments, enable_cuda_speedups

from cyclegan_core.config import DataConfig, ModelConfig, TrainConfig
from cyclegan_core.data.cache import write_decoded_cache
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.data.synthetic import make_synthetic_dataset
from cyclegan_core.inference.backends import training_precision
from cyclegan_core.training.fit import fit
from cyclegan_core.training.model import CycleGAN


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=256, help="crop size (training resolution)")
    parser.add_argument("--load-size", type=int, default=None, help="cache resolution (default size * 286/256)")
    parser.add_argument("--image-size", type=int, default=None, help="synthetic image side (default load size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--images", type=int, default=500, help="training images per domain")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per mode; the first is warm-up")
    parser.add_argument("--loader-workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--ray", action="store_true", help="also run through Ray Train (1 worker)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the dataset here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    args.load_size = args.load_size or round(args.size * 286 / 256)
    args.image_size = args.image_size or args.load_size
    return args


def configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, DataConfig]:
    model = ModelConfig(generator=args.generator, ngf=args.ngf, ndf=args.ndf)
    train = TrainConfig(batch_size=args.batch, precision=args.precision, n_epochs=args.epochs, n_epochs_decay=0)
    data = DataConfig(preprocess="resize_and_crop", load_size=args.load_size, crop_size=args.size,
                      num_workers=args.loader_workers)
    return model, train, data


def steady(per_epoch: list[float]) -> float:
    """Mean of the epochs after the first (warm-up)."""
    rest = per_epoch[1:]
    return sum(rest) / len(rest)


def run_in_process(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    model_cfg, train_cfg, data_cfg = configs(args)
    device = torch.device(args.device)
    dataset = UnpairedDataset(root, data_cfg, phase="train", seed=train_cfg.seed)
    if not dataset.uses_cache:
        raise RuntimeError(f"the pre-decoded cache of {root} is not used; the benchmark would decode JPEGs")
    loader = build_dataloader(dataset, batch_size=args.batch, num_workers=args.loader_workers, seed=train_cfg.seed)
    # an entry point: precision auto on a CPU is the choice measured on this machine (cyclegan_core.inference.backends)
    cpu_auto = (training_precision(model_cfg, crop_size=args.size, batch_size=args.batch, cache_dir=None)[0]
                if device.type == "cpu" and args.precision == "auto" else "fp32")
    model = CycleGAN(model_cfg, train_cfg, device=device, cpu_auto=cpu_auto)
    result = fit(model, loader, total_epochs=args.epochs, seed=train_cfg.seed)
    per_epoch = [end.images_per_s for end in result.epochs]
    del model, loader
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU's memory to the Ray worker process that runs next
    return {"mode": "in_process", "images_per_s": round(steady(per_epoch), 3),
            "per_epoch_images_per_s": [round(x, 3) for x in per_epoch]}


def run_through_ray(args: argparse.Namespace, root: Path, work: Path) -> dict[str, Any]:
    from pipelines.config import PipelineConfig, ScalingSettings, TrainingRunSettings, resolve
    from pipelines.records import DatasetRef
    from pipelines.train import train_on_ray

    model_cfg, train_cfg, data_cfg = configs(args)
    use_gpu = args.device == "cuda"
    config = resolve(PipelineConfig(
        dataset_uri="s3://benchmark/synthetic", cache_dir=work / "cache", output_dir=work / "outputs",
        model=model_cfg, train=train_cfg, data=data_cfg,
        scaling=ScalingSettings(num_workers=1, use_gpu=use_gpu, cpus_per_worker=1 + args.loader_workers),
        run=TrainingRunSettings(run_name=f"bench-{time.time_ns()}", storage_path=str(work / "runs"),
                                checkpoint_every_epochs=args.epochs, max_failures=0),
    ))
    dataset = DatasetRef(uri=config.dataset_uri, root=root, manifest=root / "manifest.json", version="bench")
    start = time.perf_counter()
    result = train_on_ray(config, dataset)
    wall = time.perf_counter() - start
    per_epoch = [epoch["images_per_s"] for epoch in result.history]
    return {"mode": "ray", "images_per_s": round(steady(per_epoch), 3),
            "per_epoch_images_per_s": [round(x, 3) for x in per_epoch],
            "wall_s": round(wall, 2), "epoch_s_total": round(sum(e["epoch_seconds"] for e in result.history), 2),
            "gpu_mem_peak_gb": result.history[-1].get("gpu_mem_peak_gb")}


def synthetic_dataset(root: Path, *, size: int, images: int) -> Path:
    """The synthetic pair at ``root``: reused when a previous run wrote the same size and count."""
    try:
        written = json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        written = {}
    if (written.get("size"), written.get("n_train")) == (size, images):
        return root
    return make_synthetic_dataset(root, size=size, n_train=images, n_test=2, seed=0, overwrite=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.device == "cuda":
        enable_cuda_speedups()
    common = {"generator": args.generator, "size": args.size, "batch": args.batch, "precision": args.precision,
              "device": args.device, "images": args.images, "loader_workers": args.loader_workers,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        work = args.workdir or Path(tmp)
        root = synthetic_dataset(work / "synthetic", size=args.image_size, images=args.images)
        write_decoded_cache(root, load_size=args.load_size)
        direct = {**common, **run_in_process(args, root)}
        print(json.dumps(direct), flush=True)
        if not args.ray:
            return
        ray = {**common, **run_through_ray(args, root, work)}
        print(json.dumps(ray), flush=True)
        comparison = {
            **common, "mode": "comparison",
            "ray_overhead": round(1 - ray["images_per_s"] / direct["images_per_s"], 4),
            "ray_fixed_cost_s": round(ray["wall_s"] - ray["epoch_s_total"], 2),
        }
        print(json.dumps(comparison), flush=True)


if __name__ == "__main__":
    main()
