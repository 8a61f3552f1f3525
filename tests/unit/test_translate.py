"""Inference: any-size tensors, PIL batches, file/folder translation that skips bad files and never overwrites."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.export import export_generators, load_generator
from cyclegan_core.networks import build_generator, generator_from_config
from cyclegan_core.translate import (
    pil_to_tensor,
    tensor_to_pil,
    translate_images,
    translate_path,
    translate_tensor,
)

CFG = ModelConfig(generator="resnet_6blocks", ngf=4)


@pytest.fixture(scope="module")
def generator() -> nn.Module:
    torch.manual_seed(0)
    return build_generator("resnet_6blocks", ngf=4).eval()


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = SimpleNamespace(G_AB=generator_from_config(CFG), G_BA=generator_from_config(CFG), model_cfg=CFG)
    return export_generators(model, tmp_path / "model")


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# --- tensors ---------------------------------------------------------------------------------------


def test_odd_sizes_come_back_at_their_own_size(generator: nn.Module) -> None:
    out = translate_tensor(generator, torch.rand(2, 3, 37, 53) * 2 - 1, multiple=4)
    assert out.shape == (2, 3, 37, 53)
    assert out.dtype == torch.float32 and out.abs().max() <= 1.0


def test_odd_size_output_is_the_crop_of_the_reflection_padded_translation(generator: nn.Module) -> None:
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    padded = F.pad(x, (1, 2, 1, 2), mode="reflect")  # 37 -> 40, 53 -> 56, split evenly
    with torch.no_grad():
        expected = generator(padded)[..., 1:38, 1:54]
    torch.testing.assert_close(translate_tensor(generator, x, multiple=4), expected)


def test_sizes_already_a_multiple_are_not_padded(generator: nn.Module) -> None:
    x = torch.rand(3, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(translate_tensor(generator, x, multiple=4), generator(x))


def test_images_smaller_than_the_padding_still_translate() -> None:
    unet = build_generator("unet_128", ngf=2).eval()
    assert translate_tensor(unet, torch.zeros(1, 3, 5, 7), multiple=128).shape == (1, 3, 5, 7)


def test_single_image_and_batches(generator: nn.Module) -> None:
    x = torch.rand(5, 3, 12, 12) * 2 - 1
    whole = translate_tensor(generator, x, multiple=4, batch_size=8)
    torch.testing.assert_close(translate_tensor(generator, x, multiple=4, batch_size=2), whole)
    torch.testing.assert_close(translate_tensor(generator, x[3], multiple=4), whole[3])


def test_runs_in_eval_mode_without_grad_and_restores_the_mode() -> None:
    net = build_generator("resnet_6blocks", ngf=4, dropout=True).train()
    x = torch.rand(1, 3, 8, 8)
    first = translate_tensor(net, x, multiple=4)
    assert torch.equal(first, translate_tensor(net, x, multiple=4))  # dropout off: deterministic
    assert net.training
    assert not first.requires_grad
    first.add_(1.0)  # an ordinary tensor the caller may modify in place


def test_bf16_precision_is_close_to_fp32(generator: nn.Module) -> None:
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    fp32 = translate_tensor(generator, x, multiple=4, precision="fp32")
    bf16 = translate_tensor(generator, x, multiple=4, precision="bf16")
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.1


def test_unknown_precision_is_rejected(generator: nn.Module) -> None:
    with pytest.raises(ValueError, match="precision"):
        translate_tensor(generator, torch.zeros(1, 3, 8, 8), multiple=4, precision="int8")


# --- PIL images ------------------------------------------------------------------------------------


def test_pil_tensor_conversion_round_trips() -> None:
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
    tensor = pil_to_tensor(image)
    assert tensor.shape == (3, 4, 4) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), np.asarray(image))


def test_translate_images_keeps_order_and_batches_equal_sizes(generator: nn.Module) -> None:
    sizes = [(12, 8), (20, 16), (12, 8), (20, 16), (12, 8)]
    images = [Image.new("RGB", size, (i * 40, 0, 0)) for i, size in enumerate(sizes)]
    calls: list[tuple[int, ...]] = []
    hook = generator.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    try:
        out = translate_images(generator, images, multiple=4)
    finally:
        hook.remove()
    assert [image.size for image in out] == sizes
    assert sorted(calls) == [(2, 3, 16, 20), (3, 3, 8, 12)]  # one forward per size
    single = translate_images(generator, [images[3]], multiple=4)[0]
    assert np.array_equal(np.asarray(out[3]), np.asarray(single))


# --- files and folders -----------------------------------------------------------------------------


def test_folder_translation_skips_and_reports_a_corrupt_file(tmp_path: Path, model_dir: Path) -> None:
    inputs = tmp_path / "in"
    write_image(inputs / "a.png", (20, 12), seed=1)
    write_image(inputs / "b.jpg", (20, 12), seed=2)
    write_image(inputs / "c.png", (9, 15), seed=3)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (inputs / "notes.txt").write_text("not an image")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}

    summary = translate_path(model_dir, inputs, tmp_path / "out", batch_size=2)

    assert summary.translated == 3
    assert [Path(s.path).name for s in summary.skipped] == ["broken.png"]
    assert summary.skipped[0].reason
    assert sorted(Path(p).name for p in summary.outputs) == ["a.png", "b.png", "c.png"]
    assert Image.open(tmp_path / "out" / "c.png").size == (9, 15)
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_direction_picks_the_generator_of_a_model_folder(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "in" / "x.png", (16, 16))
    translate_path(model_dir, source, tmp_path / "ab", direction="AtoB")
    translate_path(model_dir, source, tmp_path / "ba", direction="BtoA")
    g_ba, _ = load_generator(model_dir / "G_BA")
    expected = translate_images(g_ba, [Image.open(source)], multiple=4)[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ba" / "x.png")), np.asarray(expected))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "ab" / "x.png")), np.asarray(expected))


def test_single_generator_folder_and_explicit_output_file(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "photo.jpg", (10, 14))
    summary = translate_path(model_dir / "G_AB", source, tmp_path / "result.png")
    assert summary.outputs == [str(tmp_path / "result.png")]
    assert Image.open(tmp_path / "result.png").size == (10, 14)


def test_output_folder_equal_to_input_folder_is_refused(tmp_path: Path, model_dir: Path) -> None:
    write_image(tmp_path / "in" / "a.png", (8, 8))
    with pytest.raises(ValueError, match="refusing"):
        translate_path(model_dir, tmp_path / "in", tmp_path / "in" / ".." / "in")


def test_output_file_equal_to_input_file_is_refused(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "a.png", (8, 8))
    original = source.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        translate_path(model_dir, source, source)
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        translate_path(model_dir, source, tmp_path)  # -> tmp_path/a.png is the input itself
    assert source.read_bytes() == original


def test_inputs_sharing_a_stem_get_distinct_outputs(tmp_path: Path, model_dir: Path) -> None:
    write_image(tmp_path / "in" / "a.jpg", (8, 8), seed=1)
    write_image(tmp_path / "in" / "a.png", (8, 8), seed=2)
    summary = translate_path(model_dir, tmp_path / "in", tmp_path / "out")
    assert sorted(Path(p).name for p in summary.outputs) == ["a.jpg.png", "a.png"]


def test_missing_input_is_reported(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        translate_path(model_dir, tmp_path / "nothing", tmp_path / "out")


def test_official_pth_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(build_generator("resnet_9blocks", ngf=64).state_dict(), tmp_path / "latest_net_G_A.pth")
    source = write_image(tmp_path / "in.png", (12, 12))
    summary = translate_path(tmp_path / "latest_net_G_A.pth", source, tmp_path / "out", direction="BtoA")
    assert summary.translated == 1 and Image.open(tmp_path / "out" / "in.png").size == (12, 12)


def test_single_channel_model_reads_and_writes_greyscale(tmp_path: Path) -> None:
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4, input_nc=1, output_nc=1)
    model = SimpleNamespace(G_AB=generator_from_config(cfg), G_BA=generator_from_config(cfg), model_cfg=cfg)
    export_generators(model, tmp_path / "grey")
    source = write_image(tmp_path / "rgb.png", (8, 12))
    translate_path(tmp_path / "grey", source, tmp_path / "out")
    result = Image.open(tmp_path / "out" / "rgb.png")
    assert result.mode == "L" and result.size == (8, 12)
