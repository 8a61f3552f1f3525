"""Task quality of each backend on a trained model: paired PSNR of G_AB(testA) against testA_ref (the demo's
metric) through torch fp32 (the reference), OpenVINO fp32, bf16 and int8 (NNCF, calibrated on the first
``--calibration`` images of trainA: the model's input domain), and each output's PSNR against torch fp32's.

    cyclegan demo --out demo-output
    python benchmarks/backend_quality.py --model demo-output/outputs/<run>/generators --data demo-output/synthetic

One JSON line per path: ``paired_psnr_db`` (mean over testA), ``vs_fp32_paired_db`` (its difference to torch
fp32's), ``output_vs_fp32_db`` (PSNR of the outputs against torch fp32's, [0, 1] scale, all images).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.data.images import decode_image, list_images
from cyclegan_core.evaluation.metrics import psnr
from cyclegan_core.inference.backends import load_translator
from cyclegan_core.inference.translator import pil_to_tensor

PATHS = (("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model folder (G_AB/ + G_BA/)")
    parser.add_argument("--data", type=Path, required=True, help="synthetic dataset with testA/ and testA_ref/")
    parser.add_argument("--calibration", type=int, default=8)
    args = parser.parse_args()
    refs = list_images(args.data / "testA_ref")
    inputs = [decode_image(args.data / "testA" / ref.name) for ref in refs]
    targets = torch.stack([pil_to_tensor(decode_image(ref)) for ref in refs])
    calibration = [decode_image(path) for path in list_images(args.data / "trainA")[: args.calibration]]
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as cache:
        for backend, precision in PATHS:
            translator = load_translator(args.model, backend=backend, precision=precision, device="cpu",
                                         cache_dir=Path(cache), calibration=calibration)
            outputs[(backend, precision)] = torch.stack([pil_to_tensor(image) for image in translator(inputs)])
    reference = outputs[("torch", "fp32")]
    base = float(psnr(reference, targets).mean())
    for (backend, precision), out in outputs.items():
        paired = float(psnr(out, targets).mean())
        mse = float(((out - reference) / 2).square().mean())
        print(
            json.dumps(
                {
                    "benchmark": "backend_quality",
                    "backend": backend,
                    "precision": precision,
                    "images": len(refs),
                    "paired_psnr_db": round(paired, 3),
                    "vs_fp32_paired_db": round(paired - base, 3),
                    "output_vs_fp32_db": None if mse == 0 else round(10 * float(torch.log10(torch.tensor(1 / mse))), 1),
                    "calibration_images": args.calibration if precision == "int8" else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
