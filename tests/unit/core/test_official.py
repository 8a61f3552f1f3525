"""Official checkpoints need no flags: every official architecture's state dict loads through
``Translator.from_pretrained`` with its architecture inferred, computes what the source network
computes, and translates through ``cyclegan translate --model X.pth IN OUT``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator, size_multiple
from cyclegan_core.networks.official import ArchitectureError, infer_generator_config
from pipelines.cli import app
from pipelines.cli.app import ExitCode

NGF = 8
CASES = [
    ("resnet_6blocks", "instance", False),
    ("resnet_6blocks", "batch", False),
    ("resnet_9blocks", "instance", False),
    ("resnet_9blocks", "batch", False),
    ("resnet_6blocks", "instance", True),
    ("resnet_9blocks", "batch", True),
    ("unet_128", "instance", False),
    ("unet_128", "batch", False),
    ("unet_256", "instance", False),
    ("unet_256", "batch", False),
    ("unet_256", "instance", True),  # U-Net dropout leaves no trace in the keys: inferred as off
]


def source_network(name: str, norm: str, dropout: bool) -> nn.Module:
    """An official-layout generator (this repo's builders reproduce its keys) with random batch-norm stats."""
    torch.manual_seed(0)
    net = build_generator(name, ngf=NGF, norm=norm, dropout=dropout)
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return net.eval()


def same_output(translator: Translator, net: nn.Module, name: str) -> bool:
    side = size_multiple(name) if name.startswith("unet") else 16
    x = torch.rand(1, 3, side, side) * 2 - 1
    with torch.no_grad():
        return torch.equal(translator.translate_tensor(x, precision="fp32"), net(x))


def translate_with_the_cli(pth: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)).save(inputs / "photo.png")
    result = CliRunner().invoke(
        app,
        [
            "translate",
            "--model",
            str(pth),
            "--backend",
            "torch",
            "--precision",
            "fp32",
            str(inputs),
            str(tmp_path / "out"),
        ],
    )  # backends: tests/integration/test_openvino.py
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "photo.png").size == (20, 12)


@pytest.mark.parametrize(("name", "norm", "dropout"), CASES)
def test_official_state_dict_loads_with_its_architecture_inferred(
    name: str, norm: str, dropout: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net = source_network(name, norm, dropout)
    torch.save(net.state_dict(), tmp_path / "latest_net_G_A.pth")
    with caplog.at_level(logging.INFO, logger="cyclegan_core.inference.pretrained"):
        translator = Translator.from_pretrained(tmp_path / "latest_net_G_A.pth", device="cpu")
    expected = ModelConfig(generator=name, ngf=NGF, norm=norm, dropout=dropout and name.startswith("resnet"))
    assert translator.config == expected
    assert f"inferred {name} (norm={norm}, ngf={NGF}" in caplog.text
    assert same_output(translator, net, name)
    translate_with_the_cli(tmp_path / "latest_net_G_A.pth", tmp_path)


def test_dataparallel_prefix_and_old_pytorch_instance_norm_stats(tmp_path: Path) -> None:
    net = source_network("unet_256", "instance", False)
    state = {f"module.{key}": value for key, value in net.state_dict().items()}
    # PyTorch <= 0.3 saved running statistics for every InstanceNorm, although it keeps none.
    norms = [name for name, module in net.named_modules() if isinstance(module, nn.InstanceNorm2d)]
    assert norms
    for norm in norms:
        channels = dict(net.named_modules())[norm].num_features
        state[f"module.{norm}.running_mean"] = torch.zeros(channels)
        state[f"module.{norm}.running_var"] = torch.ones(channels)
        state[f"module.{norm}.num_batches_tracked"] = torch.tensor(7)
    torch.save(state, tmp_path / "old.pth")
    translator = Translator.from_pretrained(tmp_path / "old.pth", device="cpu")
    assert translator.config == ModelConfig(generator="unet_256", ngf=NGF)
    assert same_output(translator, net, "unet_256")
    translate_with_the_cli(tmp_path / "old.pth", tmp_path)


def test_input_and_output_channels_are_read_from_the_first_and_last_conv() -> None:
    state = build_generator("resnet_6blocks", ngf=NGF, input_nc=1, output_nc=3).state_dict()
    cfg = infer_generator_config(state)
    assert (cfg.input_nc, cfg.output_nc, cfg.ngf) == (1, 3, NGF)
    state = build_generator("unet_128", ngf=NGF, input_nc=3, output_nc=1).state_dict()
    assert (infer_generator_config(state).input_nc, infer_generator_config(state).output_nc) == (3, 1)


def test_a_u_net_depth_without_a_known_name_is_refused() -> None:
    from cyclegan_core.networks.generators import UnetGenerator

    state = UnetGenerator(num_downs=6, ngf=NGF).state_dict()
    with pytest.raises(ArchitectureError, match=r"matches no known generator.*closest is unet_128"):
        infer_generator_config(state)


def test_the_cli_names_the_file_that_fits_no_architecture(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "classifier.pth")
    (tmp_path / "in.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["translate", "--model", str(tmp_path / "classifier.pth"),
                                      str(tmp_path / "in.png"), str(tmp_path / "out")])
    assert result.exit_code == ExitCode.REFUSED
    assert "classifier.pth: not a known generator state dict" in " ".join(result.output.split())
