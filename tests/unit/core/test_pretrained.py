"""Generator files: exported folders round-trip, official .pth files load strictly with their architecture
inferred, bad files fail clearly naming the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.pretrained import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    GeneratorLoadError,
    load_official_generator,
    save_generators,
)
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator, generator_from_config
from cyclegan_core.networks.generators import ResnetGenerator

CFG = ModelConfig(generator="resnet_6blocks", ngf=4, input_nc=1, output_nc=3)


def tiny_model(seed: int = 0) -> SimpleNamespace:
    """A CycleGAN's generators: G_AB, G_BA and model_cfg."""
    torch.manual_seed(seed)
    g_ab = generator_from_config(CFG)
    g_ba = generator_from_config(CFG.model_copy(update={"input_nc": 3, "output_nc": 1}))
    return SimpleNamespace(G_AB=g_ab, G_BA=g_ba, model_cfg=CFG)


def export_generators(model: SimpleNamespace, dest: Path) -> Path:
    return Translator(model.G_AB, model.G_BA, model.model_cfg).save_pretrained(dest)


def save_generator(net: nn.Module, cfg: ModelConfig, dest: Path, *, direction: str) -> Path:
    return save_generators({direction: net}, cfg, dest)


def load_generator(path: Path, *, direction: str = "AtoB") -> tuple[nn.Module, ModelConfig]:
    translator = Translator.from_pretrained(path, device="cpu")
    return translator.generator(direction), translator.config


def official_state(ngf: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """An official-layout resnet_6blocks state dict with random values (as a trained checkpoint)."""
    generator = torch.Generator().manual_seed(seed)
    layout = build_generator("resnet_6blocks", ngf=ngf).state_dict()
    return {key: torch.randn(value.shape, generator=generator) for key, value in layout.items()}


def same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- exported folders ------------------------------------------------------------------------------


def test_export_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny_model()
    dest = export_generators(model, tmp_path / "model")
    assert sorted(p.name for p in dest.iterdir()) == ["G_AB", "G_BA"]

    g_ab, cfg_ab = load_generator(dest, direction="AtoB")
    g_ba, cfg_ba = load_generator(dest / "G_BA")
    assert cfg_ab == CFG
    assert (cfg_ba.input_nc, cfg_ba.output_nc) == (3, 1)  # the stored config rebuilds G_BA itself
    assert not g_ab.training and not g_ba.training
    assert same_outputs(g_ab, model.G_AB, torch.randn(2, 1, 12, 16))
    assert same_outputs(g_ba, model.G_BA, torch.randn(2, 3, 12, 16))


def test_exported_config_is_self_describing(tmp_path: Path) -> None:
    save_generator(tiny_model().G_AB, CFG, tmp_path / "g", direction="AtoB")
    config = json.loads((tmp_path / "g" / CONFIG_FILE).read_text())
    assert config["format_version"] == 1 and config["direction"] == "AtoB"
    assert ModelConfig.model_validate(config["model"]) == CFG


def test_export_replaces_an_existing_export_and_leaves_no_temporaries(tmp_path: Path) -> None:
    export_generators(tiny_model(seed=0), tmp_path / "model")
    newer = tiny_model(seed=1)
    export_generators(newer, tmp_path / "model")
    loaded, _ = load_generator(tmp_path / "model")
    assert same_outputs(loaded, newer.G_AB, torch.randn(1, 1, 8, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_generator_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "g").write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_generator(tiny_model().G_AB, CFG, tmp_path / "g", direction="AtoB")
    assert (tmp_path / "g").read_text() == "not a folder"


def test_save_generator_rejects_an_unknown_direction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AtoB, BtoA"):
        save_generator(tiny_model().G_AB, CFG, tmp_path / "g", direction="AB")


def test_export_unwraps_distributed_data_parallel(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = tiny_model()
        model.G_AB = nn.parallel.DistributedDataParallel(model.G_AB)
        export_generators(model, tmp_path / "model")
    finally:
        dist.destroy_process_group()
    loaded, _ = load_generator(tmp_path / "model")  # strict: keys carry no "module." prefix
    assert same_outputs(loaded, model.G_AB.module, torch.randn(1, 1, 8, 8))


def test_load_reports_a_missing_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorLoadError, match=r"empty is neither an exported generator"):
        load_generator(tmp_path / "empty")


def test_load_reports_a_corrupt_safetensors_file(tmp_path: Path) -> None:
    save_generator(tiny_model().G_AB, CFG, tmp_path / "g", direction="AtoB")
    (tmp_path / "g" / WEIGHTS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(GeneratorLoadError, match=r"model\.safetensors is not a readable safetensors file"):
        load_generator(tmp_path / "g")


def test_load_reports_an_unknown_format_version(tmp_path: Path) -> None:
    save_generator(tiny_model().G_AB, CFG, tmp_path / "g", direction="AtoB")
    config = json.loads((tmp_path / "g" / CONFIG_FILE).read_text())
    (tmp_path / "g" / CONFIG_FILE).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(GeneratorLoadError, match="format_version 99"):
        load_generator(tmp_path / "g")


def test_load_reports_weights_that_do_not_match_the_config(tmp_path: Path) -> None:
    save_generator(tiny_model().G_AB, CFG, tmp_path / "g", direction="AtoB")
    config = json.loads((tmp_path / "g" / CONFIG_FILE).read_text())
    config["model"]["ngf"] = 8
    (tmp_path / "g" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(
        GeneratorLoadError,
        match=r"shape mismatches: model\.1\.weight: file \(4, 1, 7, 7\) vs "
        r"model \(8, 1, 7, 7\)",
    ):
        load_generator(tmp_path / "g")


def test_load_reports_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(GeneratorLoadError, match="does not exist"):
        load_generator(tmp_path / "nowhere")


# --- official checkpoints --------------------------------------------------------------------------


def test_official_checkpoint_loads_strictly(tmp_path: Path) -> None:
    state = official_state()
    torch.save(state, tmp_path / "latest_net_G_A.pth")
    net, cfg = load_official_generator(tmp_path / "latest_net_G_A.pth")
    assert cfg == ModelConfig(generator="resnet_6blocks", ngf=4)
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_official_dataparallel_prefix_and_stale_instance_norm_stats_are_removed(tmp_path: Path) -> None:
    state = official_state()
    old = {f"module.{key}": value for key, value in state.items()}
    # Checkpoints of PyTorch <= 0.3 carry running statistics for every (stat-less) InstanceNorm.
    for norm in ("model.2", "model.10.conv_block.2", "model.17"):
        old[f"module.{norm}.running_mean"] = torch.zeros(4)
        old[f"module.{norm}.running_var"] = torch.ones(4)
    old["module.model.5.num_batches_tracked"] = torch.tensor(3)
    torch.save(old, tmp_path / "old.pth")
    net, cfg = load_official_generator(tmp_path / "old.pth")
    assert cfg.norm == "instance" and cfg.generator == "resnet_6blocks"
    assert torch.equal(net.state_dict()["model.1.weight"], state["model.1.weight"])


def test_translator_accepts_an_official_pth(tmp_path: Path) -> None:
    torch.save(official_state(), tmp_path / "g.pth")
    translator = Translator.from_pretrained(tmp_path / "g.pth", device="cpu")
    assert translator.config == ModelConfig(generator="resnet_6blocks", ngf=4)
    assert translator.directions == ("AtoB",)
    assert translator.generator()(torch.randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_a_resnet_6blocks_checkpoint_is_not_read_as_the_9_block_default(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    torch.save(official_state(), tmp_path / "g.pth")
    with caplog.at_level(logging.INFO, logger="cyclegan_core.inference.pretrained"):
        _, cfg = load_official_generator(tmp_path / "g.pth")
    assert cfg.generator == "resnet_6blocks"
    assert "g.pth: inferred resnet_6blocks (norm=instance, ngf=4, 3->3 channels, dropout off)" in caplog.text


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = official_state()
    del state["model.23.bias"]
    state["model.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "g.pth")
    with pytest.raises(GeneratorLoadError) as error:
        load_official_generator(tmp_path / "g.pth")
    message = str(error.value)
    assert "g.pth" in message and "matches no known generator" in message
    assert "closest is resnet_6blocks (norm=instance, ngf=4" in message
    assert "missing keys: model.23.bias" in message
    assert "unexpected keys: model.99.weight" in message


def test_batch_norm_checkpoint_is_recognised_by_its_norm_weights(tmp_path: Path) -> None:
    layout = build_generator("resnet_6blocks", ngf=4, norm="batch").state_dict()
    torch.save({k: torch.zeros_like(v) for k, v in layout.items()}, tmp_path / "bn.pth")
    net, cfg = load_official_generator(tmp_path / "bn.pth")
    assert cfg.norm == "batch"
    assert "model.2.running_mean" in net.state_dict()
    incomplete = {k: torch.zeros_like(v) for k, v in layout.items() if k != "model.2.running_var"}
    torch.save(incomplete, tmp_path / "bn_incomplete.pth")
    with pytest.raises(GeneratorLoadError, match=r"bn_incomplete\.pth.*missing keys: model\.2\.running_var"):
        load_official_generator(tmp_path / "bn_incomplete.pth")


def test_a_resnet_of_an_unknown_block_count_is_reported(tmp_path: Path) -> None:
    net = ResnetGenerator(ngf=4, n_blocks=5)
    torch.save(net.state_dict(), tmp_path / "five.pth")
    with pytest.raises(GeneratorLoadError, match=r"cannot load .*five\.pth: the state dict matches no known "
                                                 r"generator .*closest is resnet_6blocks"):
        load_official_generator(tmp_path / "five.pth")


def test_a_state_dict_of_something_else_is_reported(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "classifier.pth")
    with pytest.raises(GeneratorLoadError, match=r"classifier\.pth: not a known generator state dict.*fc\.weight"):
        load_official_generator(tmp_path / "classifier.pth")


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(GeneratorLoadError, match=r"bad\.pth is not a readable PyTorch checkpoint"):
        load_official_generator(tmp_path / "bad.pth")


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    torch.save({"net": SimpleNamespace(a=1)}, tmp_path / "pickle.pth")  # weights_only=True refuses this
    with pytest.raises(GeneratorLoadError, match=r"pickle\.pth is not a readable PyTorch checkpoint"):
        load_official_generator(tmp_path / "pickle.pth")


def test_checkpoint_without_a_state_dict_is_reported(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(GeneratorLoadError, match="does not hold a state dict"):
        load_official_generator(tmp_path / "list.pth")


def test_a_training_checkpoint_is_pointed_at_from_checkpoint(tmp_path: Path) -> None:
    torch.save({"format": "cyclegan_core.checkpoint", "state": {}, "extra": {}}, tmp_path / "cyclegan.pt")
    with pytest.raises(GeneratorLoadError, match="Translator.from_checkpoint"):
        Translator.from_pretrained(tmp_path / "cyclegan.pt", device="cpu")
