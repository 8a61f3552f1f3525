"""A trained model for the translation benchmarks: a CycleGAN trained briefly on the synthetic domains,
exported as a model folder (``G_AB/`` + ``G_BA/``) that ``translate_cli.py --model`` and ``cyclegan
translate`` read.

Random weights make a poor stand-in for a champion when precision is the question: an untrained ResNet's
residual stream grows block after block and bf16 outputs of a random resnet_9blocks fall 34-43 dB from
fp32's, where the same network after 300 steps is 55-59 dB from them (benchmarks/README.md, "Fast CPU
translation"). bf16 autocast trains it (the measured ``auto`` of this project's hosts), at ``--size`` px
crops of ``--images`` images per domain, batch 1.

    python benchmarks/reference_model.py OUT --epochs 3 --images 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import DataConfig, ModelConfig, TrainConfig
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.data.synthetic import make_synthetic_dataset
from cyclegan_core.inference.translator import Translator
from cyclegan_core.training.fit import fit
from cyclegan_core.training.model import CycleGAN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the synthetic data and the exported model (model/)")
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=100, help="training images per domain")
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.manual_seed(0)
    data = make_synthetic_dataset(args.out / "synthetic", size=args.size, n_train=args.images, n_test=10, seed=0)
    model_cfg = ModelConfig(generator=args.generator, ngf=args.ngf, ndf=args.ngf)
    train_cfg = TrainConfig(n_epochs=args.epochs, n_epochs_decay=0, batch_size=1, precision=args.precision, seed=0)
    data_cfg = DataConfig(preprocess="none", load_size=args.size, crop_size=args.size, num_workers=0)
    model = CycleGAN(model_cfg, train_cfg, device="cpu")
    started = time.perf_counter()
    result = fit(model, build_dataloader(UnpairedDataset(data, data_cfg), batch_size=1), total_epochs=args.epochs,
                 seed=0)
    seconds = time.perf_counter() - started
    folder = Translator(model.G_AB, model.G_BA, model_cfg).save_pretrained(args.out / "model")
    print(json.dumps({"benchmark": "reference_model", "model": str(folder), "generator": args.generator,
                      "ngf": args.ngf, "epochs": args.epochs, "steps": model.step, "images": args.images,
                      "size": args.size, "precision": args.precision, "train_s": round(seconds, 1),
                      "last_epoch_losses": {k: round(v, 4) for k, v in result.epochs[-1].loss_means.items()}}),
          flush=True)


if __name__ == "__main__":
    main()
