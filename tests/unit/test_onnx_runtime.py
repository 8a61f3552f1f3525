"""The onnxruntime backend's pure parts: numpy padding and pixel conversions equal the Translator's, and an
ONNX export folder that is not one is refused naming the file (no export runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.onnx_export import OnnxModelError, is_onnx_export, read_onnx_export
from cyclegan_core.onnx_runtime import array_to_image, image_to_array, pad_array
from cyclegan_core.translator import pad_to_multiple, pil_to_tensor, tensor_to_pil


@pytest.mark.parametrize(("height", "width", "multiple"), [(5, 7, 4), (1, 2, 4), (100, 60, 128), (8, 8, 4)])
def test_numpy_padding_equals_the_translators(height: int, width: int, multiple: int) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, height, width)).astype(np.float32)
    padded, pads = pad_array(x, multiple)
    expected, expected_pads = pad_to_multiple(torch.from_numpy(x), multiple)
    assert pads == expected_pads
    assert np.array_equal(padded, expected.numpy())


def test_pixel_conversions_equal_the_translators() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert np.array_equal(image_to_array(image), pil_to_tensor(image).numpy())
    # half-way values and out-of-range ones: rounding (half to even) and clamping as tensor_to_pil
    values = np.array([(k + 0.5) / 127.5 - 1 for k in range(-3, 258)] + [-1.5, 1.5], dtype=np.float32)
    x = np.tile(values, (3, 1, 1))
    assert np.array_equal(np.asarray(array_to_image(x)), np.asarray(tensor_to_pil(torch.from_numpy(x))))


def test_a_folder_without_config_is_refused_naming_the_export_command(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match=r"config.json is missing .*cyclegan export --format onnx"):
        read_onnx_export(tmp_path)


def test_a_pytorch_generator_folder_is_not_an_onnx_export(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"format": "cyclegan-generator", "format_version": 1}))
    assert not is_onnx_export(tmp_path)
    with pytest.raises(OnnxModelError, match="is not a cyclegan-onnx config"):
        read_onnx_export(tmp_path)


def test_an_export_missing_a_graph_is_refused_naming_it(tmp_path: Path) -> None:
    config = {"format": "cyclegan-onnx", "format_version": 1, "model": {"generator": "resnet_6blocks"},
              "size_multiple": 4, "opset": 20, "exported_with": {},
              "generators": {"AtoB": {"file": "G_AB.onnx", "input_channels": 3, "output_channels": 3},
                             "BtoA": {"file": "G_BA.onnx", "input_channels": 3, "output_channels": 3}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "G_AB.onnx").write_bytes(b"")
    assert is_onnx_export(tmp_path)
    with pytest.raises(OnnxModelError, match="not a complete ONNX export: G_BA.onnx missing"):
        read_onnx_export(tmp_path)
