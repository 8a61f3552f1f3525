"""Translator: any-size tensors, PIL batches, both directions, precision, save/load round trips."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.inference.memory import forward_bytes, used_bytes
from cyclegan_core.inference.tiling import Tiling
from cyclegan_core.inference.translator import Translator, pil_to_tensor, tensor_to_pil
from cyclegan_core.networks import build_generator
from cyclegan_core.training.checkpoint import save_checkpoint
from cyclegan_core.training.model import CycleGAN

CFG = ModelConfig(generator="resnet_6blocks", ngf=4)


@pytest.fixture(scope="module")
def generator() -> nn.Module:
    torch.manual_seed(0)
    return build_generator("resnet_6blocks", ngf=4).eval()


@pytest.fixture(scope="module")
def translator(generator: nn.Module) -> Translator:
    return Translator(generator, None, CFG)


# --- tensors ---------------------------------------------------------------------------------------


def test_odd_sizes_come_back_at_their_own_size(translator: Translator) -> None:
    out = translator.translate_tensor(torch.rand(2, 3, 37, 53) * 2 - 1)
    assert out.shape == (2, 3, 37, 53)
    assert out.dtype == torch.float32 and out.abs().max() <= 1.0


def test_odd_size_output_is_the_crop_of_the_reflection_padded_translation(
    generator: nn.Module, translator: Translator
) -> None:
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    padded = F.pad(x, (1, 2, 1, 2), mode="reflect")  # 37 -> 40, 53 -> 56, split evenly
    with torch.no_grad():
        expected = generator(padded)[..., 1:38, 1:54]
    torch.testing.assert_close(translator.translate_tensor(x, precision="fp32"), expected)


def test_sizes_already_a_multiple_are_not_padded(generator: nn.Module, translator: Translator) -> None:
    x = torch.rand(3, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(translator.translate_tensor(x, precision="fp32"), generator(x))


def test_images_smaller_than_the_padding_are_replicate_padded_and_cropped() -> None:
    net = build_generator("unet_128", ngf=2)
    unet = Translator(net, None, ModelConfig(generator="unet_128", ngf=2))
    assert unet.multiple() == 128
    x = torch.rand(1, 3, 5, 7) * 2 - 1
    padded = F.pad(x, (60, 61, 61, 62), mode="replicate")  # 5 -> 128, 7 -> 128: too small to reflect
    with torch.no_grad():
        expected = net.eval()(padded)[..., 61:66, 60:67]
    torch.testing.assert_close(unet.translate_tensor(x, precision="fp32"), expected)


def test_single_image_and_batches(translator: Translator) -> None:
    x = torch.rand(5, 3, 12, 12) * 2 - 1
    whole = translator.translate_tensor(x, batch_size=8)
    torch.testing.assert_close(translator.translate_tensor(x, batch_size=2), whole)
    torch.testing.assert_close(translator.translate_tensor(x[3]), whole[3])


def test_runs_in_eval_mode_without_grad_and_restores_the_mode() -> None:
    net = build_generator("resnet_6blocks", ngf=4, dropout=True).train()
    translator = Translator(net, None, CFG.model_copy(update={"dropout": True}))
    x = torch.rand(1, 3, 8, 8)
    first = translator.translate_tensor(x)
    assert torch.equal(first, translator.translate_tensor(x))  # dropout off: deterministic
    assert net.training
    assert not first.requires_grad
    first.add_(1.0)  # an ordinary tensor the caller may modify in place


def test_bf16_precision_is_close_to_fp32(translator: Translator) -> None:
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    fp32 = translator.translate_tensor(x, precision="fp32")
    bf16 = translator.translate_tensor(x, precision="bf16")
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.1


def _fresh_translator(seed: int = 0) -> tuple[Translator, nn.Module]:
    """A translator of its own generator (these tests change its memory format) and an untouched copy."""
    torch.manual_seed(seed)
    net = build_generator("resnet_6blocks", ngf=4).eval()
    reference = copy.deepcopy(net)
    return Translator(net, None, CFG), reference


def _first_conv_weight(net: nn.Module) -> torch.Tensor:
    return next(m.weight for m in net.modules() if isinstance(m, nn.Conv2d))


def test_bf16_on_cpu_runs_channels_last_and_returns_contiguous_nchw_float32() -> None:
    translator, _ = _fresh_translator()
    out = translator.translate_tensor(torch.rand(2, 3, 21, 30) * 2 - 1, precision="bf16")
    assert _first_conv_weight(translator.generator()).is_contiguous(memory_format=torch.channels_last)
    assert out.shape == (2, 3, 21, 30) and out.dtype == torch.float32 and out.is_contiguous()


def test_an_fp32_call_after_bf16_is_the_nchw_generators_exact_output() -> None:
    translator, reference = _fresh_translator()
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    translator.translate_tensor(x, precision="bf16")
    fp32 = translator.translate_tensor(x, precision="fp32")
    assert _first_conv_weight(translator.generator()).is_contiguous()
    with torch.no_grad():
        assert torch.equal(fp32, reference(x))


def test_the_bound_precision_is_what_a_call_without_one_runs() -> None:
    translator, reference = _fresh_translator()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(translator.translate_tensor(x), reference(x))  # auto, unmeasured, on CPU: fp32
    translator.precision = "bf16"
    auto = translator.translate_tensor(x)
    assert _first_conv_weight(translator.generator()).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(auto, translator.translate_tensor(x, precision="bf16"))
    assert translator.describe().startswith("torch bf16")


def test_bf16_tiles_at_their_own_size_stay_close_to_fp32_tiles() -> None:
    translator, _ = _fresh_translator()
    x = torch.rand(3, 150, 110) * 2 - 1
    translator.memory_budget = used_bytes(torch.device("cpu")) + forward_bytes(CFG, 152, 112) // 2
    translator.tiling = Tiling(tile=64, overlap=16)
    fp32, bf16 = (translator.translate_tensor(x, precision=p) for p in ("fp32", "bf16"))
    assert bf16.shape == (3, 150, 110) and bf16.is_contiguous()
    assert (bf16 - fp32).abs().mean() < 0.02


def test_unknown_precision_is_rejected(translator: Translator) -> None:
    with pytest.raises(ValueError, match="precision"):
        translator.translate_tensor(torch.zeros(1, 3, 8, 8), precision="int8")


def test_directions_pick_their_generator_and_a_missing_one_is_an_error(generator: nn.Module) -> None:
    torch.manual_seed(1)
    other = build_generator("resnet_6blocks", ngf=4).eval()
    pair = Translator(generator, other, CFG)
    assert pair.directions == ("AtoB", "BtoA") and pair.generator("BtoA") is other
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(pair.translate_tensor(x, direction="BtoA", precision="fp32"), other(x))
    single = Translator(generator, None, CFG)
    assert single.directions == ("AtoB",)
    with pytest.raises(ValueError, match="no BtoA generator"):
        single.translate_tensor(x, direction="BtoA")
    with pytest.raises(ValueError, match="AtoB, BtoA"):
        pair.generator("AB")


# --- PIL images ------------------------------------------------------------------------------------


def test_pil_tensor_conversion_round_trips() -> None:
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
    tensor = pil_to_tensor(image)
    assert tensor.shape == (3, 4, 4) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), np.asarray(image))
    grey = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 9)
    assert pil_to_tensor(grey).shape == (1, 4, 4)
    assert np.array_equal(np.asarray(tensor_to_pil(pil_to_tensor(grey))), np.asarray(grey))


def test_translating_images_keeps_order_and_batches_equal_sizes(generator: nn.Module, translator: Translator) -> None:
    sizes = [(12, 8), (20, 16), (12, 8), (20, 16), (12, 8)]
    images = [Image.new("RGB", size, (i * 40, 0, 0)) for i, size in enumerate(sizes)]
    calls: list[tuple[int, ...]] = []
    hook = generator.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    try:
        out = translator(images)
    finally:
        hook.remove()
    assert [image.size for image in out] == sizes
    assert sorted(calls) == [(2, 3, 16, 20), (3, 3, 8, 12)]  # one forward per size
    single = translator([images[3]])[0]
    assert np.array_equal(np.asarray(out[3]), np.asarray(single))


def test_single_channel_generator_takes_and_gives_greyscale() -> None:
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4, input_nc=1, output_nc=1)
    translator = Translator(build_generator("resnet_6blocks", ngf=4, input_nc=1, output_nc=1), None, cfg)
    out = translator([Image.new("RGB", (8, 12), (10, 200, 30))])[0]
    assert out.mode == "L" and out.size == (8, 12)


# --- saving and loading ----------------------------------------------------------------------------


def test_save_pretrained_round_trips_both_generators(tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"input_nc": 1})
    torch.manual_seed(0)
    g_ab = build_generator("resnet_6blocks", ngf=4, input_nc=1, output_nc=3)
    g_ba = build_generator("resnet_6blocks", ngf=4, input_nc=3, output_nc=1)
    dest = Translator(g_ab, g_ba, cfg).save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in dest.iterdir()) == ["G_AB", "G_BA"]
    loaded = Translator.from_pretrained(dest, device="cpu")
    assert loaded.config == cfg and loaded.directions == ("AtoB", "BtoA")
    a, b = torch.rand(1, 1, 12, 16) * 2 - 1, torch.rand(1, 3, 12, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.translate_tensor(a, precision="fp32"), g_ab.eval()(a))
        assert torch.equal(loaded.translate_tensor(b, direction="BtoA", precision="fp32"), g_ba.eval()(b))


def test_a_single_generator_saves_as_a_generator_folder(translator: Translator, tmp_path: Path) -> None:
    dest = translator.save_pretrained(tmp_path / "one")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Translator.from_pretrained(dest, device="cpu")
    assert loaded.directions == ("AtoB",) and loaded.config == CFG
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded.translate_tensor(x), translator.translate_tensor(x))


def test_from_checkpoint_rebuilds_the_two_generators_without_touching_the_rng(tmp_path: Path) -> None:
    model = CycleGAN(CFG, TrainConfig(pool_size=0, precision="fp32"))  # NCHW nets, as the loaded ones
    path = save_checkpoint(model, tmp_path / "cyclegan.pt")
    before = torch.get_rng_state()
    translator = Translator.from_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), before)
    assert translator.config == CFG and translator.directions == ("AtoB", "BtoA")
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(translator.translate_tensor(x, precision="fp32"), model.G_AB.eval()(x))
        assert torch.equal(translator.translate_tensor(x, direction="BtoA", precision="fp32"),
                           model.G_BA.eval()(x))
