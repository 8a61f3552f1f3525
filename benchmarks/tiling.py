"""Tiled inference against the whole-image pass: output difference, and peak RSS, per configuration.

``quality`` lines: one synthetic scene of ``--size`` px (``cyclegan_core.data.synthetic.render_scene``) is
translated whole, then by tiles for every ``--configs`` entry ``STATISTICS:TILE:OVERLAP[:FACTOR]``
(``tile`` = each tile normalises itself, ``thumbnail`` = statistics from the image downscaled by
FACTOR), with a budget that forces tiling; each line gives the max and mean absolute difference
([-1, 1] units) and the PSNR of the tiled output against the whole one. ``memory`` lines: for each
``--rss-sizes`` a subprocess translates a PIL image of that size whole (no budget) and another by
tiles (``--budget``), and reports its peak RSS (VmHWM) and its RSS before translating.

    python benchmarks/tiling.py --generator resnet_9blocks --ngf 64 --size 512 \\
        --configs tile:256:64 thumbnail:256:64:2 thumbnail:256:64:4 --rss-sizes 1024 2048

The generator is freshly initialised (seeded) unless ``--model`` names an exported model folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.synthetic import render_scene
from cyclegan_core.inference.memory import forward_bytes, parse_bytes, used_bytes
from cyclegan_core.inference.tiling import Tiling, plan_tiles
from cyclegan_core.inference.translator import Translator, pil_to_tensor
from cyclegan_core.networks import build_generator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--model", type=Path, help="an exported model folder instead of a fresh generator")
    parser.add_argument("--size", type=int, default=512, help="side of the quality test image")
    parser.add_argument("--configs", nargs="*", default=["tile:256:64", "thumbnail:256:64:2"])
    parser.add_argument("--rss-sizes", nargs="*", type=int, default=[], help="image sides for the memory lines")
    parser.add_argument("--budget", default="1GiB", help="memory budget of the tiled memory runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "BUDGET"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_translator(args: argparse.Namespace) -> Translator:
    if args.model is not None:
        return Translator.from_pretrained(args.model, device="cpu")
    torch.manual_seed(args.seed)
    config = ModelConfig(generator=args.generator, ngf=args.ngf)
    return Translator(build_generator(args.generator, ngf=args.ngf), None, config)


def parse_config(text: str) -> Tiling:
    statistics, tile, overlap, *factor = text.split(":")
    if statistics not in ("tile", "thumbnail") or len(factor) > 1:
        raise SystemExit(f"--configs entry {text!r}: expected tile:TILE:OVERLAP or thumbnail:TILE:OVERLAP[:FACTOR]")
    return Tiling(tile=int(tile), overlap=int(overlap), statistics=statistics,  # type: ignore[arg-type]
                  thumbnail_factor=int(factor[0]) if factor else None)


def difference(tiled: torch.Tensor, whole: torch.Tensor) -> dict[str, float]:
    error = (tiled - whole).abs()
    mse = float(((tiled - whole) / 2).square().mean())  # on the [0, 1] scale, as metrics.psnr
    return {"max_abs_error": round(float(error.max()), 5), "mean_abs_error": round(float(error.mean()), 6),
            "psnr_db": round(10 * np.log10(1 / mse), 2) if mse > 0 else float("inf")}


def quality_lines(args: argparse.Namespace) -> list[dict[str, Any]]:
    translator = make_translator(args)
    image = pil_to_tensor(render_scene(np.random.default_rng(args.seed), args.size))[None]
    started = time.perf_counter()
    whole = translator.translate_tensor(image, precision="fp32")
    whole_s = time.perf_counter() - started
    lines = []
    for text in args.configs:
        translator.tiling = parse_config(text)
        # what the process holds plus half a whole-image pass: the image must go by tiles
        translator.memory_budget = used_bytes(torch.device("cpu")) + forward_bytes(
            translator.config, args.size, args.size) // 2
        started = time.perf_counter()
        tiled = translator.translate_tensor(image, precision="fp32")
        multiple = translator.multiple()
        side = args.size + -args.size % multiple
        plan = plan_tiles(side, side, tile=translator.tiling.tile or side, align=multiple,
                          overlap=translator.tiling.overlap if translator.tiling.overlap is not None else 0)
        lines.append({"benchmark": "tiling", "kind": "quality", "generator": translator.config.generator,
                      "ngf": translator.config.ngf, "size": args.size, "config": text, "tiles": plan.count,
                      "overlap_px": min((row.lead for row in plan.rows[1:]), default=0),
                      **difference(tiled, whole), "whole_s": round(whole_s, 2),
                      "tiled_s": round(time.perf_counter() - started, 2)})
    return lines


def vm_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One translation of a size x size PIL image in this process; prints its RSS figures."""
    from PIL import Image

    size, budget = int(args.child[0]), args.child[1]
    translator = make_translator(args)
    translator.memory_budget = 2**62 if budget == "none" else parse_bytes(budget)  # none: the whole-image pass
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1)
    image = Image.fromarray(pixels.astype(np.uint8))
    del pixels
    before = vm_bytes("VmRSS")
    started = time.perf_counter()
    (out,) = translator([image], precision="fp32")
    print(json.dumps({"rss_before_gib": round(before / 2**30, 3), "peak_rss_gib": round(vm_bytes("VmHWM") / 2**30, 3),
                      "seconds": round(time.perf_counter() - started, 1), "output": list(out.size)}))


def memory_lines(args: argparse.Namespace) -> list[dict[str, Any]]:
    lines = []
    for size in args.rss_sizes:
        for budget in ("none", args.budget):
            command = [sys.executable, __file__, "--generator", args.generator, "--ngf", str(args.ngf),
                       "--threads", str(args.threads), "--child", str(size), budget]
            if args.model is not None:
                command += ["--model", str(args.model)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            figures = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {
                "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
            lines.append({"benchmark": "tiling", "kind": "memory", "generator": args.generator, "ngf": args.ngf,
                          "size": size, "budget": "whole image" if budget == "none" else budget, **figures})
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    for line in [*quality_lines(args), *memory_lines(args)]:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
