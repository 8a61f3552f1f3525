"""Throughput of one CycleGAN training step (``cyclegan_core.model.CycleGAN.train_step``).

Synthetic images are created on the device once, so the figure is the step alone (both generators,
both discriminators, both optimizers), without data loading. One JSON line per configuration on
stdout (configurations = every combination of the ``--batch`` and ``--precision`` values)::

    {"generator", "size", "batch", "precision", "compile", "device", "device_name",
     "images_per_s", "step_ms", "peak_mem_gib", "torch", "load_avg_1m"}

``images_per_s`` counts images per domain (one A and one B image = one image, as in the official
figures). ``peak_mem_gib`` is the peak allocated CUDA memory on GPU and the process's peak resident
memory on CPU. Example::

    python benchmarks/train_step.py --device cuda --size 256 --batch 1 4 8 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import GeneratorName, ModelConfig, Precision, TrainConfig
from cyclegan_core.model import CycleGAN

logger = logging.getLogger("benchmarks.train_step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--generator",
        default="resnet_9blocks",
        choices=["resnet_9blocks", "resnet_6blocks", "unet_128", "unet_256", "resnet_unet_adalin"],
    )
    parser.add_argument("--discriminator", default="basic", choices=["basic", "n_layers", "pixel"])
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes, one run each")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the networks"
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC memory format (CUDA only)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotune)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 avoids oversubscription on a busy host",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} (torch threads={torch.get_num_threads()})"
    return f"{platform.processor() or platform.machine()} (torch threads={torch.get_num_threads()})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def measure(args: argparse.Namespace, *, batch: int, precision: Precision) -> dict[str, Any]:
    """Time ``args.steps`` training steps after ``args.warmup`` untimed ones."""
    device = torch.device(args.device)
    generator: GeneratorName = args.generator
    model_cfg = ModelConfig(generator=generator, discriminator=args.discriminator, ngf=args.ngf, ndf=args.ndf)
    train_cfg = TrainConfig(
        batch_size=batch,
        precision=precision,
        compile=args.compile,
        channels_last=args.channels_last,
        seed=args.seed,
    )
    model = CycleGAN(model_cfg, train_cfg, device=device)
    rng = torch.Generator(device=device).manual_seed(args.seed)
    real_A = torch.rand(batch, 3, args.size, args.size, device=device, generator=rng) * 2 - 1
    real_B = torch.rand(batch, 3, args.size, args.size, device=device, generator=rng) * 2 - 1
    for _ in range(args.warmup):
        model.train_step(real_A, real_B)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_step(real_A, real_B)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "generator": generator,
        "size": args.size,
        "batch": batch,
        "precision": model.precision,
        "compile": args.compile,
        "device": device.type,
        "device_name": device_name(device),
        "images_per_s": round(batch * args.steps / elapsed, 3),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "peak_mem_gib": round(peak_memory_gib(device), 3),
        "torch": torch.__version__,
        # a shared host slows CPU figures a lot; keep the context with them
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")  # TF32 for fp32, as in the official reference figures
    for precision in args.precision:
        for batch in args.batch:
            print(json.dumps(measure(args, batch=batch, precision=precision)), flush=True)


if __name__ == "__main__":
    main()
