"""Reading an ONNX export folder: one that is not one is refused naming the file (no export runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyclegan_core.inference.model_source import is_onnx_export
from cyclegan_core.inference.onnx_export import OnnxModelError, read_onnx_export


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
