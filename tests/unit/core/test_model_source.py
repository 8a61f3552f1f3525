"""One model source: every ``--model`` form is classified in one place, and what cannot be translated is
refused there with its reason; one ``TranslateOptions`` record names the field and the choices it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.files import TranslateOptions, TranslateOptionsError, translate_options
from cyclegan_core.inference.model_source import check_translatable, is_registry_uri, parse_model_source
from cyclegan_core.inference.pretrained import GeneratorLoadError
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator

TINY = ModelConfig(generator="resnet_6blocks", ngf=4, norm="instance")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    nets = [build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm) for _ in range(2)]
    return Translator(nets[0], nets[1], TINY).save_pretrained(tmp_path_factory.mktemp("model") / "generators")


def test_registry_uris_are_registry_sources_without_a_lookup() -> None:
    assert parse_model_source("models:/cyclegan@champion").kind == "registered"
    assert parse_model_source("models:/cyclegan/3").kind == "registered"
    assert parse_model_source("runs:/abc/generators").kind == "run"
    assert all(is_registry_uri(uri) for uri in ("models:/m@a", "runs:/r/p"))
    assert not is_registry_uri("/models/export")
    with pytest.raises(ValueError, match="resolve it first"):
        _ = parse_model_source("models:/m@champion").path


def test_local_models_are_classified_from_disk(tmp_path: Path, model_dir: Path) -> None:
    torch.save(build_generator("resnet_6blocks", ngf=4).state_dict(), tmp_path / "latest_net_G_A.pth")
    (tmp_path / "g.onnx").write_bytes(b"")
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "model.xml").write_text("<net/>")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "config.json").write_text(json.dumps({"format": "cyclegan-onnx"}))
    kinds = {path: parse_model_source(path).kind for path in (
        model_dir, model_dir / "G_AB", tmp_path / "latest_net_G_A.pth", tmp_path / "g.onnx", tmp_path / "ir",
        tmp_path / "ir" / "model.xml", tmp_path / "onnx")}
    assert list(kinds.values()) == ["model_folder", "generator_folder", "official_pth", "onnx_export", "openvino_ir",
                                    "openvino_ir", "onnx_export"]
    assert parse_model_source(str(model_dir)).path == model_dir


def test_a_missing_path_or_an_incomplete_folder_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(GeneratorLoadError, match=r"nothing does not exist \(expected an exported generator"):
        parse_model_source(tmp_path / "nothing")
    (tmp_path / "half" / "G_AB").mkdir(parents=True)
    with pytest.raises(GeneratorLoadError, match=r"half is neither an exported generator .* \(no G_BA/\)"):
        parse_model_source(tmp_path / "half")


@pytest.mark.parametrize(("name", "reason"), [("g.onnx", "is an ONNX export"), ("model.xml", "is an OpenVINO IR")])
def test_exports_for_other_runtimes_are_refused_with_what_to_use(tmp_path: Path, name: str, reason: str) -> None:
    (tmp_path / name).write_bytes(b"")
    source = parse_model_source(tmp_path / name)
    with pytest.raises(GeneratorLoadError, match=reason):
        check_translatable(source)
    with pytest.raises(GeneratorLoadError, match=reason):  # the translator refuses it the same way
        Translator.from_pretrained(tmp_path / name, device="cpu")
    check_translatable(parse_model_source("models:/m@champion"))  # a registry source is checked once local


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"direction": "AB"}, "direction", "direction must be one of AtoB, BtoA, got 'AB'"),
    ({"backend": "onnxruntime"}, "backend", "backend must be one of auto, torch, openvino, got 'onnxruntime'"),
    ({"precision": "int4"}, "precision", "precision must be one of auto, fp32, bf16, fp16, int8, got 'int4'"),
    ({"backend": "torch", "precision": "int8"}, "", "backend torch computes fp32, bf16, fp16, not int8"),
    ({"batch_size": 0}, "batch_size", "batch_size: input should be greater than or equal to 1"),
    ({"memory_budget": "lots"}, "memory_budget", "memory_budget: memory size 'lots' is not a number"),
    ({"calibration": "images"}, "", "calibration is for precision int8"),
    ({"colour": "red"}, "colour", "colour: extra inputs are not permitted"),
])
def test_translate_options_errors_name_the_field_and_the_choices(values: dict, field: str, message: str) -> None:
    with pytest.raises(TranslateOptionsError) as caught:
        translate_options(**values)
    assert caught.value.field == field and str(caught.value).startswith(message)


def test_translate_options_read_a_memory_size_and_the_batch_jobs_gpu_choice() -> None:
    options = translate_options(memory_budget="2GiB", device="cuda:1", max_skipped=None)
    assert (options.memory_budget, options.use_gpu, options.max_skipped) == (2 * 2**30, True, None)
    assert TranslateOptions().use_gpu is None and TranslateOptions(device="cpu").use_gpu is False
