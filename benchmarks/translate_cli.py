"""``cyclegan translate`` end to end, as whole commands: the default (``auto``) against ``--backend torch
--precision fp32`` (the official computation) over one folder of images.

Writes ``--n512`` synthetic scenes of 512² and ``--n1024`` of 1024² into a folder and an exported model
(resnet_9blocks ngf 64, seeded, unless ``--model``), then runs each command once to warm up (the default's
first run measures ``auto`` and converts the model into a fresh ``CYCLEGAN_CACHE_DIR``; both warm the
file cache), then ``--rounds`` rounds of both in turn. One JSON line per command: the median wall
seconds of a whole command (process start, imports, model load, every image read, translated and
written), images/s, ``speedup_paired`` (median of the rounds' fp32 / default ratios) and the PSNR of
each default output against the fp32 output (min and mean over the images, uint8 pixels, [0, 255]).

    python benchmarks/translate_cli.py --n512 8 --n1024 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.synthetic import render_scene
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator

COMMANDS = {"default": [], "torch_fp32": ["--backend", "torch", "--precision", "fp32"]}


def write_inputs(folder: Path, n512: int, n1024: int) -> int:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [512] * n512 + [1024] * n1024
    for index, size in enumerate(sizes):
        render_scene(rng, size).save(folder / f"scene{index:03d}_{size}.png")
    return len(sizes)


def run(model: Path, inputs: Path, out: Path, extra: list[str], env: dict[str, str]) -> tuple[float, str]:
    command = [str(Path(sys.executable).with_name("cyclegan")), "translate", "--model", str(model), *extra,
               str(inputs), str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, next((line for line in done.stderr.splitlines() if "translated with" in line), "")


def psnr_uint8(a: Path, b: Path) -> float:
    x, y = (np.asarray(Image.open(p), dtype=np.float64) for p in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n512", type=int, default=8)
    parser.add_argument("--n1024", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", type=Path, help="an exported model folder (default: resnet_9blocks ngf 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-translate-cli-") as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            torch.manual_seed(0)
            cfg = ModelConfig(generator="resnet_9blocks", ngf=64)
            model = Translator(build_generator(cfg.generator, ngf=cfg.ngf), None, cfg).save_pretrained(root / "model")
        count = write_inputs(root / "in", args.n512, args.n1024)
        env = {**os.environ, "CYCLEGAN_CACHE_DIR": str(root / "cache")}
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        chose: dict[str, str] = {}
        for name, extra in COMMANDS.items():  # warm-up: auto's measurement and conversion, the file cache
            warm, chose[name] = run(model, root / "in", root / f"warm-{name}", extra, env)
            print(f"{name}: warm-up {warm:.1f}s ({chose[name]})", file=sys.stderr, flush=True)
        for index in range(args.rounds):
            for name, extra in COMMANDS.items():
                seconds, _ = run(model, root / "in", root / f"out-{name}-{index}", extra, env)
                times[name].append(seconds)
            print(f"round {index + 1}: " + ", ".join(f"{n} {t[-1]:.1f}s" for n, t in times.items()),
                  file=sys.stderr, flush=True)
        names = sorted(p.name for p in (root / "out-default-0").iterdir())
        psnrs = [psnr_uint8(root / "out-default-0" / n, root / "out-torch_fp32-0" / n) for n in names]
        load = round(os.getloadavg()[0], 2)
        for name in COMMANDS:
            seconds = statistics.median(times[name])
            line = {"benchmark": "translate_cli", "command": name, "images": count, "n512": args.n512,
                    "n1024": args.n1024, "rounds": args.rounds, "wall_s": round(seconds, 1),
                    "images_per_s": round(count / seconds, 3), "translated_with": chose[name],
                    "speedup_paired": round(statistics.median(
                        f / t for f, t in zip(times["torch_fp32"], times[name], strict=True)), 2),
                    "cpu_threads": torch.get_num_threads(), "load_avg_1m": load}
            if name == "default":
                line |= {"psnr_vs_fp32_min_db": round(min(psnrs), 2),
                         "psnr_vs_fp32_mean_db": round(statistics.mean(psnrs), 2)}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
