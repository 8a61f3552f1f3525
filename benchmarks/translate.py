"""CPU inference speed of one generator per configuration, with the output quality against fp32 eager.

Configurations (``--configs``): ``fp32`` (PyTorch eager, NCHW: the official computation, the reference),
``fp32_cl`` (channels_last), ``bf16`` (autocast, NCHW), ``bf16_cl`` (autocast + channels_last: what
``--backend torch --precision bf16`` runs), ``compile_fp32`` / ``compile_bf16`` (``torch.compile``),
``onnxruntime`` (``cyclegan export``'s fp32 graph run by onnxruntime), ``openvino_fp32``,
``openvino_bf16``, ``openvino_int8`` (``cyclegan_core.inference.backends``: the converted generator; int8 quantized
by NNCF on ``--calibration`` synthetic scenes of the size), ``auto`` (what ``cyclegan translate`` does by
default: ``with_backend``'s measured choice, ``auto_chose`` says which). Every configuration runs once per
repeat in turn (round-robin), so host-load drift hits all of them alike; one JSON line per configuration,
size and batch: median ms/image, images/s, ``speedup`` against fp32 eager of the same run,
``speedup_paired`` (the median of the rounds' ratios, robust to load drift between rounds) and
``psnr_vs_fp32_db`` (output against fp32 eager's on one synthetic scene, [0, 1] scale). ``setup_s`` is
the first call with what it builds (compilation, export, conversion, quantization).

    python benchmarks/translate.py --sizes 256 512 1024 --batch 1 8 --repeats 5 3 2

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
from cyclegan_core.data.synthetic import render_scene
from cyclegan_core.inference.backends import with_backend
from cyclegan_core.inference.backends.host import this_host
from cyclegan_core.inference.backends.model_cache import cached_model, model_key
from cyclegan_core.inference.backends.openvino_runtime import compile_model, convert
from cyclegan_core.inference.backends.quantize import calibration_arrays, quantize
from cyclegan_core.inference.translator import Translator, pil_to_tensor
from cyclegan_core.networks import build_generator

CONFIGS = ("fp32", "fp32_cl", "bf16", "bf16_cl", "compile_fp32", "compile_bf16", "onnxruntime", "openvino_fp32",
           "openvino_bf16", "openvino_int8", "auto")
DEFAULT_CONFIGS = ("fp32", "bf16_cl", "onnxruntime", "openvino_fp32", "openvino_bf16", "openvino_int8", "auto")
Run = Callable[[torch.Tensor], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--model", type=Path, help="an exported model folder instead of a fresh generator")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--batch", nargs="+", type=int, default=[1], help="images per call (several: each)")
    parser.add_argument(
        "--repeats", nargs="+", type=int, default=[5, 3, 2], help="timed rounds per size (last repeats)"
    )
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=CONFIGS)
    parser.add_argument("--calibration", type=int, default=8, help="int8: synthetic calibration scenes")
    parser.add_argument("--cache-dir", type=Path, help="auto's decision and the OpenVINO models (default: a temp)")
    parser.add_argument("--threads", type=int, default=0, help="threads of every runtime (0: torch's default)")
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


def onnx_run(translator: Translator, folder: Path, threads: int) -> Run:
    """``cyclegan export``'s ONNX graph (dynamic H x W, exported once) run by onnxruntime on the CPU."""
    import onnxruntime as ort

    from cyclegan_core.inference.onnx_export import export_onnx, read_onnx_export

    dest = folder / "onnx"
    if not dest.exists():
        export_onnx(translator, dest)
    export = read_onnx_export(dest)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(dest / export.generators["AtoB"].file), options,
                                   providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([export.output_name], {export.input_name: x.numpy()})[0])


def openvino_run(translator: Translator, precision: str, cache_dir: Path, calibration: list[np.ndarray]) -> Run:
    """The generator converted by OpenVINO (cached as the backend caches it) and compiled at ``precision``."""
    net, host = translator.generator(), this_host()
    model = cached_model(cache_dir, "fp32", model_key(net, host, variant="fp32"),
                         lambda: convert(net, channels=3, multiple=translator.multiple()))
    if precision == "int8":
        model = quantize(model, calibration)
    request = compile_model(model, precision, host.threads).create_infer_request()
    return lambda x: torch.from_numpy(np.array(request.infer({0: x.numpy()})[0]))


def auto_run(translator: Translator, cache_dir: Path) -> tuple[Run, str]:
    """What ``cyclegan translate`` runs by default on this machine (measured once into ``cache_dir``)."""
    loaded: Any = with_backend(copy.copy(translator), cache_dir=cache_dir)
    return (lambda x: loaded.translate_tensor(x, batch_size=x.shape[0])), loaded.describe()


def build(config: str, translator: Translator, args: argparse.Namespace, folder: Path, size: int) -> Run:
    net = translator.generator()
    if config == "onnxruntime":
        return onnx_run(translator, folder, torch.get_num_threads())
    if config.startswith("openvino_"):
        scenes = [render_scene(np.random.default_rng(1000 + i), size) for i in range(args.calibration)]
        arrays = calibration_arrays(scenes, channels=3, multiple=translator.multiple())
        return openvino_run(translator, config.removeprefix("openvino_"), args.cache_dir, arrays)
    if config.startswith("compile_"):  # bf16 compiled as the eager bf16 path runs it: channels_last
        bf16 = config == "compile_bf16"
        return torch_run(net, bf16=bf16, channels_last=bf16, compile_net=True)
    return torch_run(net, bf16=config.startswith("bf16"), channels_last=config.endswith("_cl"))


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR in dB on the [0, 1] scale; None for identical outputs (JSON has no infinity)."""
    mse = float(((output.clamp(-1, 1) - reference.clamp(-1, 1)) / 2).square().mean())
    return round(10 * float(np.log10(1 / mse)), 2) if mse > 0 else None


def host() -> dict[str, Any]:
    flags = set()
    name = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {"cpu": name, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}), "load_avg_1m": round(os.getloadavg()[0], 2)}


def measure(args: argparse.Namespace, translator: Translator, size: int, batch: int, repeats: int,
            folder: Path) -> list[dict[str, Any]]:
    """Build every configuration for ``size`` x ``batch``, then time them round-robin ``repeats`` times."""
    scene = pil_to_tensor(render_scene(np.random.default_rng(args.seed), size))
    x = scene[None].repeat(batch, 1, 1, 1)
    runs: dict[str, Run] = {}
    setup: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    chose = ""
    for config in ["fp32", *(c for c in args.configs if c != "fp32")]:
        started = time.perf_counter()
        if config == "auto":
            runs[config], chose = auto_run(translator, args.cache_dir)
        else:
            runs[config] = build(config, translator, args, folder, size)
        outputs[config] = runs[config](x)  # warm-up; compile, export, conversion and quantization happen here
        setup[config] = time.perf_counter() - started
        print(f"{size}px x{batch} {config}: ready in {setup[config]:.1f}s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {config: [] for config in runs}
    for repeat in range(repeats):
        for config, run in runs.items():
            started = time.perf_counter()
            run(x)
            times[config].append(time.perf_counter() - started)
        print(f"{size}px x{batch} round {repeat + 1}/{repeats}: "
              + ", ".join(f"{c} {t[-1]:.2f}s" for c, t in times.items()), file=sys.stderr, flush=True)
    reference_s = statistics.median(times["fp32"])
    lines = []
    for config in args.configs:
        seconds = statistics.median(times[config])
        line = {"benchmark": "translate", "config": config, "generator": translator.config.generator,
                "ngf": translator.config.ngf, "size": size, "batch": batch, "repeats": repeats,
                "ms_per_image": round(1000 * seconds / batch, 1),
                "images_per_s": round(batch / seconds, 3), "speedup": round(reference_s / seconds, 2),
                # the median of each round's ratio: fp32 and this configuration timed seconds apart
                "speedup_paired": round(statistics.median(
                    f / t for f, t in zip(times["fp32"], times[config], strict=True)), 2),
                "psnr_vs_fp32_db": psnr(outputs[config], outputs["fp32"]),
                "setup_s": round(setup[config], 1), **host()}
        if config == "auto":
            line["auto_chose"] = chose
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = [args.repeats[min(i, len(args.repeats) - 1)] for i in range(len(args.sizes))]
    translator = make_translator(args)
    with tempfile.TemporaryDirectory(prefix="bench-translate-") as folder:
        if args.cache_dir is None:
            args.cache_dir = Path(folder) / "cache"
        for size, count in zip(args.sizes, repeats, strict=True):
            for batch in args.batch:
                for line in measure(args, translator, size, batch, count, Path(folder)):
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
