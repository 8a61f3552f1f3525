"""ONNX export: `cyclegan export --format onnx` writes both generators with dynamic height and width;
onnxruntime reproduces PyTorch on sizes that need padding (ResNet, the AdaLIN generator, U-Net). ONNX
exports are for other runtimes: `cyclegan translate` refuses one, naming the model it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.onnx_export import export_onnx, read_onnx_export
from cyclegan_core.inference.pretrained import swapped_channels
from cyclegan_core.inference.translator import Translator, pad_to_multiple
from cyclegan_core.networks import generator_from_config
from pipelines.cli import app
from pipelines.cli.app import ExitCode

# max |onnxruntime - PyTorch| in the [-1, 1] output range: float32 ops in another order (measured ~1.5e-6)
PARITY_BOUND = 1e-5
SIZES = ((32, 32), (48, 80), (100, 60))  # H x W; 100 x 60 is not a multiple of 4: padded and cropped


def tiny_generator(cfg: ModelConfig, seed: int) -> torch.nn.Module:
    """A random generator whose biases are not zero (init_weights zeroes them), so each weight matters."""
    torch.manual_seed(seed)
    net = generator_from_config(cfg)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return net.eval()


def random_batch(channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, channels, height, width)).astype(np.float32)


def onnx_run(folder: Path, direction: str, x: np.ndarray) -> np.ndarray:
    """The export's graph of ``direction`` run by onnxruntime, padded and cropped as ``Translator`` does."""
    import onnxruntime as ort

    export = read_onnx_export(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / export.generators[direction].file), options,
                                   providers=["CPUExecutionProvider"])
    height, width = x.shape[-2:]
    padded, (left, _, top, _) = pad_to_multiple(torch.from_numpy(x), export.size_multiple)
    out = session.run([export.output_name], {export.input_name: padded.numpy()})[0]
    return np.clip(out[:, :, top:top + height, left:left + width], -1.0, 1.0)


def max_difference(folder: Path, translator: Translator, direction: str, size: tuple[int, int]) -> float:
    x = random_batch(translator.input_channels(direction), *size)
    expected = translator.translate_tensor(torch.from_numpy(x), direction=direction, precision="fp32").numpy()
    got = onnx_run(folder, direction, x)
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A resnet_6blocks (ngf 4) model folder and its export by `cyclegan export --format onnx`."""
    root = tmp_path_factory.mktemp("onnx-resnet")
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4)
    Translator(tiny_generator(cfg, 1), tiny_generator(swapped_channels(cfg), 2), cfg).save_pretrained(root / "model")
    done = CliRunner().invoke(app, ["export", "--model", str(root / "model"), "--format", "onnx",
                                    str(root / "onnx"), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["files"] == ["G_AB.onnx", "G_BA.onnx", "config.json"] and summary["size_multiple"] == 4
    return {"model": root / "model", "onnx": root / "onnx"}


def test_export_writes_both_generators_with_dynamic_height_and_width(resnet: dict[str, Path]) -> None:
    import onnx

    export = read_onnx_export(resnet["onnx"])
    assert export.model.generator == "resnet_6blocks" and export.opset >= 18
    assert set(export.exported_with) == {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert sorted(p.name for p in resnet["onnx"].iterdir()) == ["G_AB.onnx", "G_BA.onnx", "config.json"]
    graph = onnx.load(str(resnet["onnx"] / "G_AB.onnx")).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, H, W symbolic; C fixed (3)


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_resnet_onnx_matches_pytorch_on_sizes_that_need_padding(resnet: dict[str, Path], direction: str) -> None:
    translator = Translator.from_pretrained(resnet["model"], device="cpu")
    differences = [max_difference(resnet["onnx"], translator, direction, size) for size in SIZES]
    assert max(differences) <= PARITY_BOUND, differences


@pytest.mark.parametrize(("generator", "sizes"), [
    ("resnet_unet_adalin", SIZES),
    # U-Net pads to multiples of 128: 100 x 60 becomes 128 x 128
    pytest.param("unet_128", ((128, 128), (128, 256), (100, 60)), marks=pytest.mark.slow),
])
def test_onnx_matches_pytorch_for_other_generators(tmp_path: Path, generator: str,
                                                   sizes: tuple[tuple[int, int], ...]) -> None:
    cfg = ModelConfig(generator=generator, ngf=4)
    translator = Translator(tiny_generator(cfg, 3), None, cfg)
    folder = export_onnx(translator, tmp_path / "onnx")
    differences = [max_difference(folder, translator, "AtoB", size) for size in sizes]
    assert max(differences) <= PARITY_BOUND, differences


def test_translate_refuses_an_onnx_export_naming_the_model_it_came_from(resnet: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    done = CliRunner().invoke(app, ["translate", "--model", str(resnet["onnx"]), str(tmp_path / "in.png"),
                                    str(tmp_path / "out.png")])
    assert done.exit_code == ExitCode.REFUSED, done.output
    assert "is an ONNX export" in " ".join(done.output.split()) and not (tmp_path / "out.png").exists()


def test_export_of_a_bad_model_exits_refused_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    done = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "broken.pth"), str(tmp_path / "out")])
    assert done.exit_code == ExitCode.REFUSED, done.output
    assert "broken.pth is not a readable PyTorch checkpoint" in " ".join(done.output.split())
    assert not (tmp_path / "out").exists()
