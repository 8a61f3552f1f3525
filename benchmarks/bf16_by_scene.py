"""How far bf16 outputs are from fp32's, scene by scene and size by size: the figures behind ``auto``'s
quality rule for translation (the worst of several probe scenes, with room for larger images).

For each size, ``--scenes`` synthetic scenes (one seeded generator, as the probe draws them) go through the
A->B generator in torch fp32 (the reference), torch bf16 autocast (channels_last, as ``Translator`` runs
it) and OpenVINO bf16; one JSON line per scene and size with the PSNR of each bf16 output against fp32's
(float outputs in [-1, 1], on the [0, 1] scale). Only quality is measured here: speed is translate.py's.

    python benchmarks/bf16_by_scene.py --sizes 256 512 1024 --scenes 6 [--model FOLDER]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.backends.openvino_runtime import compile_model, convert
from cyclegan_core.inference.backends.probe import probe_inputs, psnr_db, torch_forward
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported model folder (default: resnet_9blocks ngf 64, "
                        "seeded random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--scenes", type=int, default=6)
    args = parser.parse_args()
    if args.model is None:
        torch.manual_seed(0)
        cfg = ModelConfig(generator="resnet_9blocks", ngf=64)
        translator = Translator(build_generator(cfg.generator, ngf=cfg.ngf), None, cfg)
    else:
        translator = Translator.from_pretrained(args.model, device="cpu")
    net = translator.generator("AtoB").eval()
    channels, multiple = translator.input_channels("AtoB"), translator.multiple("AtoB")
    request = compile_model(convert(net, channels=channels, multiple=multiple), "bf16",
                            torch.get_num_threads()).create_infer_request()
    for size in args.sizes:
        for index, scene in enumerate(probe_inputs(channels, size, args.scenes)):
            fp32 = torch_forward(net, "fp32", lambda scene=scene: scene)()
            bf16 = torch_forward(net, "bf16", lambda scene=scene: scene)()
            openvino = torch.from_numpy(np.array(request.infer({0: scene.numpy()})[0]))
            print(json.dumps({"benchmark": "bf16_by_scene", "model": str(args.model or "random resnet_9blocks ngf 64"),
                              "size": size, "scene": index, "torch_bf16_db": psnr_db(bf16, fp32),
                              "openvino_bf16_db": psnr_db(openvino, fp32)}), flush=True)


if __name__ == "__main__":
    main()
