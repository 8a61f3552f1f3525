"""Throughput of one CycleGAN training step (``cyclegan_core.training.model.CycleGAN.train_step``).

Synthetic images are created on the device once, so the figure is the step alone (both generators,
both discriminators, both optimizers), without data loading. One JSON line per configuration on
stdout (configurations = every combination of the ``--batch`` and ``--precision`` values)::

    {"generator", "size", "batch", "precision", "compile" (false or the mode), "device", "device_name",
     "images_per_s", "step_ms", "peak_mem_gib", "torch", "load_avg_1m"}

``images_per_s`` counts images per domain (one A and one B image = one image, as in the official
figures). ``peak_mem_gib`` is the peak allocated CUDA memory on GPU and the process's peak resident
memory on CPU. For the configuration the official implementation was measured in (resnet_9blocks,
basic D, ngf = ndf = 64, 256 px, batch 1/4/8) the line also carries those reference figures
(``official_h100_*``) and ``speedup_vs_official``; they are only meaningful on an H100. Example::

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
from typing import Any, get_args

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import GeneratorName, ModelConfig, Precision, TrainConfig
from cyclegan_core.inference.backends import training_precision
from cyclegan_core.training.model import CycleGAN

logger = logging.getLogger("benchmarks.train_step")

# The official implementation (junyanz/pytorch-CycleGAN-and-pix2pix, its defaults, TF32 convolutions)
# measured on one H100 80GB with torch 2.11: resnet_9blocks, basic PatchGAN, lsgan, 256 px, synthetic
# tensors on the GPU. batch -> (images/s, peak GiB). Reference figures only; its code is not used here.
OFFICIAL_H100 = {1: (10.1, 2.5), 4: (35.1, 8.8), 8: (40.3, 17.1)}


def official_reference(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """The official figures for this configuration, when they exist (same nets, size and batch)."""
    same_model = (args.generator, args.discriminator, args.ngf, args.ndf, args.size) == (
        "resnet_9blocks", "basic", 64, 64, 256
    )
    if not same_model or batch not in OFFICIAL_H100:
        return {}
    images_per_s, peak_gib = OFFICIAL_H100[batch]
    return {"official_h100_images_per_s": images_per_s, "official_h100_peak_mem_gib": peak_gib}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--generator --ngf --ndf --device``: the options every benchmark that trains shares."""
    parser.add_argument("--generator", default="resnet_9blocks", choices=get_args(GeneratorName))
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )


def enable_cuda_speedups() -> None:
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    torch.set_float32_matmul_precision("high")  # TF32 for fp32, as in the official reference figures


def build_parser(description: str = __doc__.split("\n\n")[0]) -> argparse.ArgumentParser:
    """The options of the step benchmarks (``profile_step.py`` adds its own to these)."""
    parser = argparse.ArgumentParser(description=description)
    add_model_arguments(parser)
    parser.add_argument("--discriminator", default="basic", choices=["basic", "n_layers", "pixel"])
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes, one run each")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the networks"
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode (reduce-overhead = CUDA graphs)",
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
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 avoids oversubscription on a busy host",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or build_parser()
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


def build_step(
    args: argparse.Namespace, *, batch: int, precision: Precision
) -> tuple[CycleGAN, torch.Tensor, torch.Tensor]:
    """The model of ``args`` and one synthetic A and B batch already on its device."""
    device = torch.device(args.device)
    generator: GeneratorName = args.generator
    model_cfg = ModelConfig(generator=generator, discriminator=args.discriminator, ngf=args.ngf, ndf=args.ndf)
    train_cfg = TrainConfig(
        batch_size=batch,
        precision=precision,
        compile=args.compile,
        compile_mode=args.compile_mode,
        channels_last=args.channels_last,
        seed=args.seed,
    )
    # an entry point: precision auto on a CPU is the choice measured on this machine (cyclegan_core.inference.backends)
    cpu_auto = (training_precision(model_cfg, crop_size=args.size, batch_size=batch, cache_dir=None)[0]
                if device.type == "cpu" and precision == "auto" else "fp32")
    model = CycleGAN(model_cfg, train_cfg, device=device, cpu_auto=cpu_auto)
    rng = torch.Generator(device=device).manual_seed(args.seed)
    real_A = torch.rand(batch, 3, args.size, args.size, device=device, generator=rng) * 2 - 1
    real_B = torch.rand(batch, 3, args.size, args.size, device=device, generator=rng) * 2 - 1
    return model, real_A, real_B


def measure(args: argparse.Namespace, *, batch: int, precision: Precision) -> dict[str, Any]:
    """Time ``args.steps`` training steps after ``args.warmup`` untimed ones."""
    device = torch.device(args.device)
    model, real_A, real_B = build_step(args, batch=batch, precision=precision)
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
    images_per_s = batch * args.steps / elapsed
    reference = official_reference(args, batch)
    if reference:
        reference["speedup_vs_official"] = round(images_per_s / reference["official_h100_images_per_s"], 2)
    return {
        "generator": args.generator,
        "size": args.size,
        "batch": batch,
        "precision": model.precision,
        "compile": args.compile_mode if args.compile else False,
        "device": device.type,
        "device_name": device_name(device),
        "images_per_s": round(images_per_s, 3),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "peak_mem_gib": round(peak_memory_gib(device), 3),
        "torch": torch.__version__,
        # a shared host slows CPU figures a lot; keep the context with them
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **reference,
    }


def configure_torch(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        enable_cuda_speedups()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    configure_torch(args)
    for precision in args.precision:
        for batch in args.batch:
            print(json.dumps(measure(args, batch=batch, precision=precision)), flush=True)


if __name__ == "__main__":
    main()
