"""CPU inference speed of one generator per configuration, with the output quality against fp32 eager.

Configurations (``--configs``): ``fp32`` (eager, NCHW: the reference), ``fp32_cl`` (channels_last),
``bf16`` (autocast), ``bf16_cl`` (autocast + channels_last), ``compile_fp32`` / ``compile_bf16``
(``torch.compile``, bf16 with channels_last), ``onnxruntime`` (the fp32 graph of
``cyclegan_core.onnx_export.export_onnx`` run by ``OnnxTranslator``), ``auto`` (``Translator.translate_tensor`` with
``precision="auto"``: what ``cyclegan translate`` does by default). Every configuration runs once per
repeat in turn (round-robin), so host-load drift hits all of them alike; one JSON line per
configuration and size: median ms/image, images/s, ``speedup`` against fp32 eager of the same run,
``speedup_paired`` (the median of the rounds' ratios, robust to load drift between rounds),
and ``psnr_vs_fp32_db`` (output against fp32 eager's on one synthetic scene, [0, 1] scale). Compile
and ONNX export times are reported apart (``setup_s``: the first call, with the compile or the export
and session; the export is made once, for the first size).

    python benchmarks/translate.py --sizes 256 1024 --repeats 5 3

The generator is freshly initialised (seeded) unless ``--model`` names an exported model folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import ModelConfig
from cyclegan_core.networks import build_generator
from cyclegan_core.precision import fast_cpu_bf16, resolve_precision
from cyclegan_core.synthetic import render_scene
from cyclegan_core.translator import Translator, pil_to_tensor

CONFIGS = ("fp32", "fp32_cl", "bf16", "bf16_cl", "compile_fp32", "compile_bf16", "onnxruntime", "auto")
Run = Callable[[torch.Tensor], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--model", type=Path, help="an exported model folder instead of a fresh generator")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--repeats", nargs="+", type=int, default=[5, 3], help="timed rounds per size (last repeats)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_translator(args: argparse.Namespace) -> Translator:
    if args.model is not None:
        return Translator.from_pretrained(args.model, device="cpu")
    torch.manual_seed(args.seed)
    return Translator(build_generator(args.generator, ngf=args.ngf).eval(), None,
                      ModelConfig(generator=args.generator, ngf=args.ngf))


def torch_run(net: nn.Module, *, bf16: bool, channels_last: bool, compile_net: bool = False) -> Run:
    """A copy of ``net`` in the memory format (``torch.compile``d if asked); the call converts its
    input and returns NCHW float32."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(net).to(memory_format=memory_format).eval()
    if compile_net:
        net = torch.compile(net)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(x.contiguous(memory_format=memory_format)).float().contiguous()
    return run


def onnx_session(translator: Translator, folder: Path, threads: int) -> Run:
    """``cyclegan export``'s ONNX graph (``export_onnx``, dynamic H x W, exported once) run by
    ``OnnxTranslator`` (onnxruntime, CPU), as ``cyclegan translate --backend onnxruntime`` runs it."""
    from cyclegan_core.onnx_export import export_onnx
    from cyclegan_core.onnx_runtime import OnnxTranslator

    dest = folder / "onnx"
    if not dest.exists():
        export_onnx(translator, dest)
    session = OnnxTranslator.from_folder(dest, threads=threads)
    return lambda x: torch.from_numpy(session.translate_array(x.numpy()))


def build(config: str, translator: Translator, folder: Path, threads: int) -> Run:
    net = translator.generator()
    if config == "auto":
        return lambda x: translator.translate_tensor(x, precision="auto", batch_size=x.shape[0])
    if config == "onnxruntime":
        return onnx_session(translator, folder, threads)
    if config.startswith("compile_"):  # bf16 compiled as the eager bf16 path runs it: channels_last
        bf16 = config == "compile_bf16"
        return torch_run(net, bf16=bf16, channels_last=bf16, compile_net=True)
    return torch_run(net, bf16=config.startswith("bf16"), channels_last=config.endswith("_cl"))


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR in dB on the [0, 1] scale; None for identical outputs (JSON has no infinity)."""
    mse = float(((output.clamp(-1, 1) - reference.clamp(-1, 1)) / 2).square().mean())
    return round(10 * float(np.log10(1 / mse)), 2) if mse > 0 else None


def host() -> dict[str, Any]:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    return {"cpu": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "fast_cpu_bf16": fast_cpu_bf16(), "torch": torch.__version__}


def measure_size(args: argparse.Namespace, translator: Translator, size: int, repeats: int,
                 folder: Path) -> list[dict[str, Any]]:
    """Build every configuration for ``size``, then time them round-robin ``repeats`` times."""
    scene = pil_to_tensor(render_scene(np.random.default_rng(args.seed), size))
    x = scene[None].repeat(args.batch, 1, 1, 1)
    runs: dict[str, Run] = {}
    setup: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for config in ["fp32", *(c for c in args.configs if c != "fp32")]:
        started = time.perf_counter()
        runs[config] = build(config, translator, folder, torch.get_num_threads())
        outputs[config] = runs[config](x)  # warm-up; compile happens here
        setup[config] = time.perf_counter() - started
        print(f"{size}px {config}: ready in {setup[config]:.1f}s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {config: [] for config in runs}
    for repeat in range(repeats):
        for config, run in runs.items():
            started = time.perf_counter()
            run(x)
            times[config].append(time.perf_counter() - started)
        print(f"{size}px round {repeat + 1}/{repeats}: "
              + ", ".join(f"{c} {t[-1]:.2f}s" for c, t in times.items()), file=sys.stderr, flush=True)
    reference_s = statistics.median(times["fp32"])
    lines = []
    for config in args.configs:
        seconds = statistics.median(times[config])
        line = {"benchmark": "translate", "config": config, "generator": translator.config.generator,
                "ngf": translator.config.ngf, "size": size, "batch": args.batch, "repeats": repeats,
                "ms_per_image": round(1000 * seconds / args.batch, 1),
                "images_per_s": round(args.batch / seconds, 3), "speedup": round(reference_s / seconds, 2),
                # the median of each round's ratio: fp32 and this configuration timed seconds apart
                "speedup_paired": round(statistics.median(
                    f / t for f, t in zip(times["fp32"], times[config], strict=True)), 2),
                "psnr_vs_fp32_db": psnr(outputs[config], outputs["fp32"]),
                "setup_s": round(setup[config], 1), "load_avg_1m": round(os.getloadavg()[0], 2), **host()}
        if config == "auto":
            line["auto_resolves_to"] = resolve_precision("auto", torch.device("cpu"))
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = [args.repeats[min(i, len(args.repeats) - 1)] for i in range(len(args.sizes))]
    translator = make_translator(args)
    with tempfile.TemporaryDirectory(prefix="bench-translate-") as folder:
        for size, count in zip(args.sizes, repeats, strict=True):
            for line in measure_size(args, translator, size, count, Path(folder)):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
