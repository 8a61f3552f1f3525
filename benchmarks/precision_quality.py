"""Does bf16 training reach the quality of fp32? A short training run per precision on the synthetic pair.

For each ``--precision``: the same seed, data and configuration (``preprocess="none"`` at ``--size``,
linear LR schedule over ``--epochs``: half constant, half decay), trained in process with
``cyclegan_core.training.fit.fit``; then ``G_AB`` translates testA (in fp32) and the paired PSNR
against ``testA_ref`` (the ground truth ``f(testA)``) is taken, next to the identity baseline (testA
itself). One JSON line per precision, then a ``comparison`` line with the PSNR differences to the
first precision. Run-to-run noise: repeat with other ``--seed`` values::

    python benchmarks/precision_quality.py --device cuda --size 128 --images 400 --epochs 20 \\
        --batch 4 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import logging
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
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.data.images import decode_image, list_images
from cyclegan_core.data.synthetic import REFERENCE_SPLIT, identity_psnr, make_synthetic_dataset
from cyclegan_core.evaluation.metrics import psnr
from cyclegan_core.inference.translator import Translator, pil_to_tensor
from cyclegan_core.training.fit import fit
from cyclegan_core.training.model import CycleGAN


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=200, help="training images per domain")
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loader-workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (half constant, half decay)")
    return args


def paired_psnr(translator: Translator, root: Path) -> float:
    """Mean PSNR (dB) of G_AB(testA) against testA_ref, translated in fp32."""
    refs = list_images(root / REFERENCE_SPLIT)
    inputs = torch.stack([pil_to_tensor(decode_image(root / "testA" / ref.name)) for ref in refs])
    targets = torch.stack([pil_to_tensor(decode_image(ref)) for ref in refs])
    outputs = translator.translate_tensor(inputs, precision="fp32").cpu()
    return float(psnr(outputs, targets).mean())


def train_and_score(args: argparse.Namespace, root: Path, precision: str) -> dict[str, Any]:
    device = torch.device(args.device)
    model_cfg = ModelConfig(generator=args.generator, ngf=args.ngf, ndf=args.ndf)
    train_cfg = TrainConfig(batch_size=args.batch, precision=precision, lr=args.lr, seed=args.seed,
                            n_epochs=args.epochs // 2, n_epochs_decay=args.epochs - args.epochs // 2)
    data_cfg = DataConfig(preprocess="none", load_size=args.size, crop_size=args.size,
                          num_workers=args.loader_workers)
    model = CycleGAN(model_cfg, train_cfg, device=device)
    loader = build_dataloader(UnpairedDataset(root, data_cfg, seed=args.seed), batch_size=args.batch,
                              num_workers=args.loader_workers, seed=args.seed)
    start = time.perf_counter()
    final = fit(model, loader, total_epochs=args.epochs, seed=args.seed).epochs[-1]
    seconds = time.perf_counter() - start
    last = {key: round(value, 4) for key, value in final.loss_means.items()}
    return {
        "precision": model.precision, "steps": model.step, "train_s": round(seconds, 1),
        "psnr_AtoB": round(paired_psnr(Translator(model.G_AB, model.G_BA, model_cfg), root), 3),
        "final_epoch_losses": last,
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.device == "cuda":
        enable_cuda_speedups()
    common = {"generator": args.generator, "ngf": args.ngf, "size": args.size, "images": args.images,
              "epochs": args.epochs, "batch": args.batch, "seed": args.seed, "device": args.device}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        root = make_synthetic_dataset(Path(tmp) / "synthetic", size=args.size, n_train=args.images,
                                      n_test=args.test_images, seed=args.seed)
        baseline = round(identity_psnr(root), 3)
        for precision in args.precision:
            result = {**common, **train_and_score(args, root, precision), "identity_psnr": baseline}
            results.append(result)
            print(json.dumps(result), flush=True)
    first = results[0]
    print(json.dumps({**common, "mode": "comparison", "reference_precision": first["precision"],
                      "psnr_difference": {r["precision"]: round(r["psnr_AtoB"] - first["psnr_AtoB"], 3)
                                          for r in results[1:]}}), flush=True)


if __name__ == "__main__":
    main()
