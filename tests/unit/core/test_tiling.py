"""Tiled inference: tile geometry, blending windows, frozen statistics, and the Translator's budget rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.memory import (
    MemoryBudgetError,
    band_bytes,
    forward_bytes,
    largest_tile,
    parse_bytes,
    used_bytes,
)
from cyclegan_core.inference.tile_statistics import capture_statistics, with_frozen_statistics
from cyclegan_core.inference.tiling import (
    Span,
    Tiling,
    plan_tiles,
    ramp,
    run_tiled,
    spans,
    tensor_reader,
    window,
)
from cyclegan_core.inference.translator import Translator, pil_to_tensor, tensor_to_pil
from cyclegan_core.networks import build_generator

CPU = torch.device("cpu")


# --- geometry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "align"),
    [(1000, 256, 64, 4), (512, 256, 64, 4), (260, 256, 8, 4), (2048, 512, 256, 256), (96, 32, 0, 4)],
)
def test_spans_cover_the_axis_on_the_grid_with_at_least_the_overlap(
    length: int, tile: int, overlap: int, align: int
) -> None:
    found = spans(length, tile, overlap, align)
    assert found[0].start == 0 and found[-1].stop == length
    assert all(s.stop - s.start == tile and s.start % align == 0 for s in found)
    for previous, span in itertools.pairwise(found):
        assert span.start > previous.start and previous.stop - span.start == span.lead == previous.trail >= overlap
    assert found[0].lead == 0 and found[-1].trail == 0


def test_an_axis_up_to_one_tile_is_one_span_of_its_length() -> None:
    assert spans(200, 256, 64, 4) == [Span(0, 200)]
    assert spans(4, 256, 64, 4) == [Span(0, 4)]


def test_spans_refuse_a_tile_off_the_grid_or_no_wider_than_its_overlap() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        spans(1000, 254, 64, 4)
    with pytest.raises(ValueError, match="exceed the overlap"):
        spans(1000, 64, 64, 4)


# --- blending ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_a_ramp_and_its_mirror_sum_to_one(n: int) -> None:
    torch.testing.assert_close(ramp(n) + ramp(n).flip(0), torch.ones(n, dtype=torch.float64))


def test_windows_of_a_plan_sum_to_one_everywhere() -> None:
    plan = plan_tiles(300, 520, tile=128, overlap=40, align=4)
    total = torch.zeros(1, 300, 520)
    for row in plan.rows:
        for col in plan.cols:
            total[:, row.start:row.stop, col.start:col.stop] += window(row, col)
    torch.testing.assert_close(total, torch.ones_like(total))


def test_a_window_ignores_the_outer_quarter_of_each_overlap_and_keeps_image_borders() -> None:
    w = window(Span(0, 128, lead=0, trail=64), Span(64, 192, lead=64, trail=0))[0]
    assert torch.all(w[:, :16] == 0) and torch.all(w[112:, :] == 0)
    assert torch.all(w[:48, 48:] == 1), "the image border side (lead 0) and the interior have weight 1"


def _run(net: nn.Module, image: torch.Tensor, *, tile: int, overlap: int, align: int) -> torch.Tensor:
    height, width = image.shape[1:]
    plan = plan_tiles(height, width, tile=tile, overlap=overlap, align=align)
    out = torch.full((3, height, width), float("nan"))

    def write(first: int, rows: torch.Tensor) -> None:
        out[:, first:first + rows.shape[1]] = rows

    with torch.no_grad():
        run_tiled(net, tensor_reader(image, (0, 0, 0, 0), plan, CPU), plan, write)
    return out


def test_a_pointwise_network_gives_the_whole_image_output_tiled() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh())
    image = torch.rand(3, 200, 332) * 2 - 1
    with torch.no_grad():
        whole = net(image[None])[0]
    torch.testing.assert_close(_run(net, image, tile=64, overlap=16, align=4), whole)


# --- frozen statistics ---------------------------------------------------------------------------


def test_a_copy_with_the_whole_image_statistics_is_the_same_network_on_that_image() -> None:
    torch.manual_seed(0)
    net = build_generator("resnet_6blocks", ngf=4).eval()
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    frozen = with_frozen_statistics(net, capture_statistics(net, image))
    with torch.no_grad():
        torch.testing.assert_close(frozen(image), net(image), atol=1e-5, rtol=1e-4)
    assert frozen.model[1].weight is net.model[1].weight, "the copy shares the weights"
    assert isinstance(net.model[2], nn.InstanceNorm2d), "the original is left as it was"


def test_tiles_with_the_whole_image_statistics_match_the_whole_image() -> None:
    """Once the statistics are fixed the generator is local: tiles agree with the whole pass up to
    where their receptive field leaves the tile (the ramps ignore that part of each overlap)."""
    torch.manual_seed(0)
    net = build_generator("resnet_6blocks", ngf=4).eval()
    image = torch.rand(3, 192, 192) * 2 - 1
    with torch.no_grad():
        whole = net(image[None])[0]
    frozen = with_frozen_statistics(net, capture_statistics(net, image[None]))
    error = (_run(frozen, image, tile=128, overlap=64, align=4) - whole).abs()
    own_statistics = (_run(net, image, tile=128, overlap=64, align=4) - whole).abs()
    assert error.max() < 0.05 and error.mean() < 1e-3
    assert own_statistics.mean() > 10 * error.mean()


def test_adalin_generator_statistics_and_style_are_frozen_too() -> None:
    torch.manual_seed(0)
    net = build_generator("resnet_unet_adalin", ngf=4).eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    stats = capture_statistics(net, image)
    assert "mlp" in stats and "decoder.0.norm" in stats and len(stats["decoder.0.norm"]) == 4
    with torch.no_grad():
        torch.testing.assert_close(with_frozen_statistics(net, stats)(image), net(image), atol=1e-5, rtol=1e-4)


# --- memory and the Translator --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("2GiB", 2 * 2**30), ("1.5 GB", 1_500_000_000), ("512MiB", 2**29),
                                                ("800m", 800_000_000), ("4096", 4096)])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "2 GiBs", "-1GB", "lots", "0"])
def test_parse_bytes_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes(text)


def test_forward_bytes_grow_with_pixels_and_width() -> None:
    small, wide = ModelConfig(ngf=8), ModelConfig(ngf=64)
    assert forward_bytes(wide, 8000, 8000) > 60 * 10**9, "issue #13: 64 MP through ngf 64 is tens of GB"
    assert forward_bytes(small, 512, 512) < forward_bytes(small, 1024, 1024) < forward_bytes(wide, 1024, 1024)


def test_largest_tile_fits_the_memory_and_names_the_budget_when_nothing_fits() -> None:
    cfg = ModelConfig(ngf=16)
    tile = largest_tile(cfg, 2**30, width=8000, height=8000, channels=3, multiple=4, minimum=132)
    assert tile % 4 == 0 and 132 <= tile < 8000
    def need(side: int) -> int:
        return forward_bytes(cfg, side, side) + band_bytes(side, 8000, 3)

    assert need(tile) <= 2**30 < need(tile + 4)
    with pytest.raises(MemoryBudgetError, match="raise the budget"):
        largest_tile(cfg, 10**6, width=8000, height=8000, channels=3, multiple=4, minimum=132)


@pytest.fixture(scope="module")
def small_translator() -> Translator:
    torch.manual_seed(0)
    return Translator(build_generator("resnet_6blocks", ngf=4).eval(), None, ModelConfig(generator="resnet_6blocks",
                                                                                         ngf=4))


def _tight(translator: Translator, height: int, width: int) -> int:
    """A budget that leaves less than one whole-image pass of ``height`` x ``width``."""
    return used_bytes(CPU) + forward_bytes(translator.config, height, width) // 2


def test_images_within_the_budget_are_translated_whole(small_translator: Translator) -> None:
    x = torch.rand(2, 3, 37, 53) * 2 - 1
    small_translator.memory_budget = None
    default = small_translator.translate_tensor(x)
    small_translator.memory_budget = used_bytes(CPU) + 2 * forward_bytes(small_translator.config, 40, 56) + 2**28
    assert torch.equal(small_translator.translate_tensor(x), default)


def test_an_image_over_the_budget_goes_by_tiles_at_its_own_size(small_translator: Translator) -> None:
    x = torch.rand(3, 301, 203) * 2 - 1
    small_translator.memory_budget = None
    whole = small_translator.translate_tensor(x)
    small_translator.memory_budget = _tight(small_translator, 304, 204)
    small_translator.tiling = Tiling(tile=128, overlap=32)
    try:
        tiled = small_translator.translate_tensor(x)
    finally:
        small_translator.memory_budget, small_translator.tiling = None, Tiling()
    assert tiled.shape == whole.shape and not torch.equal(tiled, whole)
    assert tiled.abs().max() <= 1 and torch.isfinite(tiled).all()


@pytest.mark.parametrize(("height", "width"), [(301, 203), (300, 200), (130, 517)])
def test_tiles_of_a_pointwise_generator_reassemble_the_whole_output_at_any_size(height: int, width: int) -> None:
    """Padding, tile reads, blending and cropping are exact: a network without spatial context gives the
    whole-image output tiled, on the float and on the uint8 path."""
    torch.manual_seed(0)
    translator = Translator(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh()), None, ModelConfig(generator="resnet_6blocks"))
    x = torch.rand(2, 3, height, width) * 2 - 1
    image = tensor_to_pil(x[0])
    whole, (whole_pil,) = translator.translate_tensor(x), translator([image])
    translator.memory_budget = used_bytes(CPU) + 2**20
    translator.tiling = Tiling(tile=64, overlap=16)
    torch.testing.assert_close(translator.translate_tensor(x), whole)
    (tiled_pil,) = translator([image])
    assert np.abs(np.asarray(tiled_pil, dtype=int) - np.asarray(whole_pil, dtype=int)).max() <= 1


def test_a_pil_image_over_the_budget_goes_by_tiles_as_uint8(small_translator: Translator) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (150, 221, 3), dtype=np.uint8))
    small_translator.memory_budget = _tight(small_translator, 152, 224)
    small_translator.tiling = Tiling(tile=64, overlap=16, statistics="tile")
    try:
        (tiled,) = small_translator([image])
        expected = tensor_to_pil(small_translator.translate_tensor(pil_to_tensor(image)))
    finally:
        small_translator.memory_budget, small_translator.tiling = None, Tiling()
    assert tiled.size == image.size and tiled.mode == "RGB"
    # the float path and the uint8 path tile alike: only rounding of the blended output differs
    assert np.abs(np.asarray(tiled, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_a_budget_too_small_for_any_tile_is_a_clear_error(small_translator: Translator) -> None:
    small_translator.memory_budget = used_bytes(CPU) + 1000
    try:
        with pytest.raises(MemoryBudgetError, match="memory budget"):
            small_translator.translate_tensor(torch.zeros(3, 512, 512))
    finally:
        small_translator.memory_budget = None


# --- the pyfunc model's memory_budget param -------------------------------------------------------


def test_the_pyfunc_param_memory_budget_reaches_a_copy_of_the_translator(small_translator: Translator) -> None:
    import pandas as pd

    from pipelines.registry.pyfunc import ImageTranslationModel, model_signature, tiny_png

    assert [spec.name for spec in model_signature().params.params] == ["direction", "memory_budget"]
    model = ImageTranslationModel()
    model._translator = small_translator
    data = pd.DataFrame({"image": [tiny_png()]})
    plain = model.predict(None, data)["image"][0]
    assert model.predict(None, data, params={"memory_budget": "64GiB"})["image"][0] == plain
    assert model._with_budget("2GiB").memory_budget == 2 * 2**30 and small_translator.memory_budget is None
    with pytest.raises(ValueError, match="param memory_budget: memory size 'lots'"):
        model.predict(None, data, params={"memory_budget": "lots"})
