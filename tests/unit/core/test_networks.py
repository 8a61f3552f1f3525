"""Networks: official architectures (parameter counts, state-dict layout), shapes, norms, init, AdaLIN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.networks import (
    GENERATOR_NAMES,
    ILN,
    AdaLIN,
    build_discriminator,
    build_generator,
    clip_rho_,
    count_parameters,
    discriminator_from_config,
    generator_from_config,
    init_weights,
    size_multiple,
)
from cyclegan_core.networks.generators import ResnetUnetAdaLINGenerator


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


# The official resnet_6blocks (ngf=64, instance norm) state dict, written out from the module tree of
# junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py: ReflectionPad(0) Conv(1) IN(2) ReLU(3),
# Conv(4) IN ReLU, Conv(7) IN ReLU, ResnetBlocks 10..15 (conv_block: Pad Conv(1) IN ReLU Pad Conv(5) IN),
# ConvTranspose(16) IN ReLU, ConvTranspose(19) IN ReLU, Pad(22) Conv(23) Tanh. Instance norm has no
# parameters or buffers; ConvTranspose weights are (in, out, kH, kW).
OFFICIAL_RESNET_6BLOCKS = {
    "model.1.weight": (64, 3, 7, 7),
    "model.1.bias": (64,),
    "model.4.weight": (128, 64, 3, 3),
    "model.4.bias": (128,),
    "model.7.weight": (256, 128, 3, 3),
    "model.7.bias": (256,),
    "model.10.conv_block.1.weight": (256, 256, 3, 3),
    "model.10.conv_block.1.bias": (256,),
    "model.10.conv_block.5.weight": (256, 256, 3, 3),
    "model.10.conv_block.5.bias": (256,),
    "model.11.conv_block.1.weight": (256, 256, 3, 3),
    "model.11.conv_block.1.bias": (256,),
    "model.11.conv_block.5.weight": (256, 256, 3, 3),
    "model.11.conv_block.5.bias": (256,),
    "model.12.conv_block.1.weight": (256, 256, 3, 3),
    "model.12.conv_block.1.bias": (256,),
    "model.12.conv_block.5.weight": (256, 256, 3, 3),
    "model.12.conv_block.5.bias": (256,),
    "model.13.conv_block.1.weight": (256, 256, 3, 3),
    "model.13.conv_block.1.bias": (256,),
    "model.13.conv_block.5.weight": (256, 256, 3, 3),
    "model.13.conv_block.5.bias": (256,),
    "model.14.conv_block.1.weight": (256, 256, 3, 3),
    "model.14.conv_block.1.bias": (256,),
    "model.14.conv_block.5.weight": (256, 256, 3, 3),
    "model.14.conv_block.5.bias": (256,),
    "model.15.conv_block.1.weight": (256, 256, 3, 3),
    "model.15.conv_block.1.bias": (256,),
    "model.15.conv_block.5.weight": (256, 256, 3, 3),
    "model.15.conv_block.5.bias": (256,),
    "model.16.weight": (256, 128, 3, 3),
    "model.16.bias": (128,),
    "model.19.weight": (128, 64, 3, 3),
    "model.19.bias": (64,),
    "model.23.weight": (3, 64, 7, 7),
    "model.23.bias": (3,),
}

# The official 70x70 PatchGAN ("basic", ndf=64, instance norm): Conv(0) LReLU, Conv(2) IN LReLU,
# Conv(5) IN LReLU, Conv(8, stride 1) IN LReLU, Conv(11) to one channel.
OFFICIAL_BASIC_D = {
    "model.0.weight": (64, 3, 4, 4),
    "model.0.bias": (64,),
    "model.2.weight": (128, 64, 4, 4),
    "model.2.bias": (128,),
    "model.5.weight": (256, 128, 4, 4),
    "model.5.bias": (256,),
    "model.8.weight": (512, 256, 4, 4),
    "model.8.bias": (512,),
    "model.11.weight": (1, 512, 4, 4),
    "model.11.bias": (1,),
}


def official_unet_layout(
    num_downs: int, ngf: int, *, batch_norm: bool, input_nc: int = 3, output_nc: int = 3
) -> dict[str, tuple[int, ...]]:
    """The official UnetGenerator's state-dict layout, derived level by level from its block recursion.

    Levels from the outside in: (output_nc, ngf) outermost, (ngf, 2ngf), (2ngf, 4ngf), (4ngf, 8ngf),
    num_downs - 5 times (8ngf, 8ngf), then (8ngf, 8ngf) innermost. In a level's Sequential the down
    conv is index 0 (outermost) or 1, the submodule is 1 (outermost) or 3, the up conv 3 (outer- and
    innermost) or 5; norms: index 2 (down) and 6 (up) for middle levels, 4 for the innermost (up).
    Convs carry a bias with instance norm, and always at the outermost up conv.
    """
    levels = [(output_nc, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)]
    levels += [(8 * ngf, 8 * ngf)] * (num_downs - 5) + [(8 * ngf, 8 * ngf)]
    layout: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, channels: int) -> None:
        if batch_norm:
            layout.update(
                {
                    f"{prefix}.weight": (channels,),
                    f"{prefix}.bias": (channels,),
                    f"{prefix}.running_mean": (channels,),
                    f"{prefix}.running_var": (channels,),
                    f"{prefix}.num_batches_tracked": (),
                }
            )

    def conv(prefix: str, shape: tuple[int, ...], bias_channels: int | None) -> None:
        layout[f"{prefix}.weight"] = shape
        if bias_channels is not None:
            layout[f"{prefix}.bias"] = (bias_channels,)

    bias = None if batch_norm else 0  # placeholder for "has bias"
    prefix = "model"
    for depth, (outer, inner) in enumerate(levels):
        seq = f"{prefix}.model"
        if depth == 0:
            conv(f"{seq}.0", (inner, input_nc, 4, 4), None if bias is None else inner)
            conv(f"{seq}.3", (inner * 2, outer, 4, 4), outer)
            prefix = f"{seq}.1"
        elif depth == len(levels) - 1:
            conv(f"{seq}.1", (inner, outer, 4, 4), None if bias is None else inner)
            conv(f"{seq}.3", (inner, outer, 4, 4), None if bias is None else outer)
            norm(f"{seq}.4", outer)
        else:
            conv(f"{seq}.1", (inner, outer, 4, 4), None if bias is None else inner)
            norm(f"{seq}.2", inner)
            conv(f"{seq}.5", (inner * 2, outer, 4, 4), None if bias is None else outer)
            norm(f"{seq}.6", outer)
            prefix = f"{seq}.3"
    return layout


# --- official architectures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_256() -> nn.Module:
    """The full-size unet_256 (54M parameters: built once, never run)."""
    return build_generator("unet_256")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet_9blocks", 11_378_179),
        ("resnet_6blocks", 7_837_699),
    ],
)
def test_generator_parameter_counts_match_official(name: str, expected: int) -> None:
    assert count_parameters(build_generator(name)) == expected


def test_unet_256_parameter_count_matches_official(unet_256: nn.Module) -> None:
    assert count_parameters(unet_256) == 54_409_603


def test_basic_discriminator_parameter_count_matches_official() -> None:
    assert count_parameters(build_discriminator("basic")) == 2_764_737


def test_resnet_6blocks_state_dict_layout_is_official() -> None:
    assert shapes(build_generator("resnet_6blocks")) == OFFICIAL_RESNET_6BLOCKS


def test_resnet_9blocks_layout_shifts_decoder_indices() -> None:
    keys = shapes(build_generator("resnet_9blocks", ngf=8))
    assert "model.18.conv_block.5.weight" in keys
    assert keys["model.19.weight"] == (32, 16, 3, 3)
    assert keys["model.22.weight"] == (16, 8, 3, 3)
    assert keys["model.26.weight"] == (3, 8, 7, 7)


def test_resnet_batch_norm_drops_conv_biases_and_adds_stats() -> None:
    keys = shapes(build_generator("resnet_6blocks", ngf=8, norm="batch"))
    assert "model.1.bias" not in keys and "model.10.conv_block.1.bias" not in keys
    assert keys["model.2.running_mean"] == (8,)
    assert keys["model.23.bias"] == (3,)  # the final conv has no norm after it


def test_resnet_dropout_sits_between_the_two_convs() -> None:
    block = build_generator("resnet_6blocks", ngf=8, dropout=True).model[10].conv_block
    assert isinstance(block[4], nn.Dropout) and isinstance(block[6], nn.Conv2d)


@pytest.mark.parametrize(("name", "num_downs"), [("unet_256", 8), ("unet_128", 7)])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_unet_state_dict_layout_is_official(name: str, num_downs: int, norm: str) -> None:
    net = build_generator(name, ngf=4, norm=norm)
    assert shapes(net) == official_unet_layout(num_downs, 4, batch_norm=norm == "batch")


def test_unet_256_full_size_layout_is_official(unet_256: nn.Module) -> None:
    assert shapes(unet_256) == official_unet_layout(8, 64, batch_norm=False)


def test_basic_discriminator_layout_is_official() -> None:
    assert shapes(build_discriminator("basic")) == OFFICIAL_BASIC_D


def test_pixel_discriminator_layout_is_official() -> None:
    assert shapes(build_discriminator("pixel", ndf=8)) == {
        "net.0.weight": (8, 3, 1, 1),
        "net.0.bias": (8,),
        "net.2.weight": (16, 8, 1, 1),
        "net.2.bias": (16,),
        "net.5.weight": (1, 16, 1, 1),
        "net.5.bias": (1,),
    }


def test_instance_norm_is_not_affine_and_keeps_no_running_stats() -> None:
    norms = [
        m for m in build_generator("resnet_6blocks", ngf=8).modules() if isinstance(m, nn.InstanceNorm2d)
    ]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)


# --- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "ngf"),
    [
        ("resnet_9blocks", 32, 8),
        ("resnet_6blocks", 32, 8),
        ("resnet_unet_adalin", 32, 8),
        ("unet_128", 128, 4),
        ("unet_256", 256, 4),
    ],
)
def test_generator_output_shape_and_range(name: str, size: int, ngf: int) -> None:
    net = build_generator(name, ngf=ngf, output_nc=2)
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 2, size, size)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("name", ["resnet_6blocks", "resnet_unet_adalin"])
def test_generators_run_with_other_norms(name: str, norm: str) -> None:
    net = build_generator(name, ngf=8, norm=norm)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3, 16, 16)
    norm_layers = {type(m) for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))}
    assert norm_layers == ({nn.BatchNorm2d} if norm == "batch" else set())  # the norm asked for, only it


@pytest.mark.parametrize(
    ("name", "n_layers", "size", "expected"),
    [
        ("basic", 3, 64, 6),
        ("n_layers", 1, 32, 14),
        ("n_layers", 5, 128, 2),
        ("pixel", 3, 20, 20),
    ],
)
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_discriminator_output_shape(name: str, n_layers: int, size: int, expected: int, norm: str) -> None:
    net = build_discriminator(name, ndf=8, n_layers=n_layers, norm=norm, input_nc=1)
    assert net(torch.randn(2, 1, size, size)).shape == (2, 1, expected, expected)


def test_n_layers_depth_caps_channels_at_8_ndf() -> None:
    convs = [
        m for m in build_discriminator("n_layers", ndf=4, n_layers=5).modules() if isinstance(m, nn.Conv2d)
    ]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 2, 1, 1]


def test_size_multiples() -> None:
    assert {name: size_multiple(name) for name in GENERATOR_NAMES} == {
        "resnet_9blocks": 4,
        "resnet_6blocks": 4,
        "unet_128": 128,
        "unet_256": 256,
        "resnet_unet_adalin": 4,
    }


def test_unknown_names_are_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="resnet_9blocks"):
        build_generator("resnet_3blocks")
    with pytest.raises(ValueError, match="pixel"):
        build_discriminator("global")
    with pytest.raises(ValueError, match="instance"):
        build_generator("resnet_6blocks", norm="group")
    with pytest.raises(ValueError, match="orthogonal"):
        build_generator("resnet_6blocks", ngf=4, init_type="uniform")
    with pytest.raises(ValueError, match="unet_256"):
        size_multiple("unet_512")


def test_networks_from_config() -> None:
    cfg = ModelConfig(
        generator="resnet_6blocks",
        ngf=8,
        ndf=8,
        input_nc=1,
        output_nc=3,
        norm="batch",
        discriminator="n_layers",
        n_layers_d=2,
    )
    generator = generator_from_config(cfg)
    assert generator(torch.randn(2, 1, 16, 16)).shape == (2, 3, 16, 16)
    first_conv = next(m for m in generator.modules() if isinstance(m, nn.Conv2d))
    assert (first_conv.in_channels, first_conv.out_channels) == (1, 8)  # input_nc and ngf of the config
    assert sum(isinstance(m, nn.BatchNorm2d) for m in generator.modules()) > 0
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in generator.modules())
    assert discriminator_from_config(cfg)(torch.randn(2, 3, 32, 32)).shape[1] == 1
    assert discriminator_from_config(cfg, input_nc=1)(torch.randn(2, 1, 32, 32)).shape[1] == 1


# --- init ------------------------------------------------------------------------------------------


def _big_conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.ConvTranspose2d(128, 64, 3), nn.Linear(64, 64)
    )


@pytest.mark.parametrize(
    ("init_type", "gain", "expected_std"),
    [
        ("normal", 0.02, 0.02),
        ("xavier", 0.5, 0.5 * math.sqrt(2.0 / (64 * 9 + 128 * 9))),
        ("kaiming", 0.02, math.sqrt(2.0 / (64 * 9))),  # the official kaiming ignores the gain
    ],
)
def test_init_weight_statistics(init_type: str, gain: float, expected_std: float) -> None:
    torch.manual_seed(0)
    net = init_weights(_big_conv(), init_type, gain)
    conv, batch_norm, deconv, linear = net
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert conv.weight.mean().abs().item() < expected_std * 0.05
    for layer in (conv, deconv, linear):
        assert torch.count_nonzero(layer.bias) == 0
    assert batch_norm.weight.mean().item() == pytest.approx(1.0, abs=gain)
    assert torch.count_nonzero(batch_norm.bias) == 0


def test_orthogonal_init_gives_orthogonal_rows_scaled_by_gain() -> None:
    linear = init_weights(nn.Sequential(nn.Linear(32, 16)), "orthogonal", 0.5)[0]
    gram = linear.weight @ linear.weight.T
    torch.testing.assert_close(gram, 0.25 * torch.eye(16), atol=1e-5, rtol=0)


def test_build_applies_the_requested_init() -> None:
    net = build_generator("resnet_6blocks", ngf=8, init_type="normal", init_gain=0.3)
    assert net.model[1].weight.std().item() == pytest.approx(0.3, rel=0.1)
    assert torch.count_nonzero(net.model[1].bias) == 0


# --- AdaLIN / ILN ----------------------------------------------------------------------------------


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.instance_norm(x), F.layer_norm(x, x.shape[1:])


def test_adalin_mixes_instance_and_layer_norm_by_rho() -> None:
    torch.manual_seed(0)
    layer = AdaLIN(4)
    x, gamma, beta = torch.randn(2, 4, 5, 6) * 3 + 1, torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        layer.rho.copy_(torch.tensor([0.0, 0.25, 0.9, 1.0]).view(1, 4, 1, 1))
    out_in, out_ln = _stats(x)
    rho = layer.rho
    expected = (rho * out_in + (1 - rho) * out_ln) * gamma[:, :, None, None] + beta[:, :, None, None]
    torch.testing.assert_close(layer(x, gamma, beta), expected, atol=1e-5, rtol=1e-5)


def test_adalin_rejects_gamma_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"gamma and beta of shape \(2, 4\)"):
        AdaLIN(4)(torch.randn(2, 4, 3, 3), torch.ones(4), torch.zeros(2, 4))


def test_iln_starts_as_layer_norm() -> None:
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ILN(3)(x), F.layer_norm(x, x.shape[1:]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("push", "bound"), [(-1.0, 1.0), (1.0, 0.0)])
def test_rho_pushed_out_of_range_is_clamped_in_forward_and_by_clip_rho(push: float, bound: float) -> None:
    """An optimizer step pushes rho beyond [0, 1]: the forward uses the bound, clip_rho_ stores it."""
    layer = ILN(3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=2.0)
    layer.rho.grad = torch.full_like(layer.rho, push)
    layer.gamma.grad = torch.zeros_like(layer.gamma)
    layer.beta.grad = torch.zeros_like(layer.beta)
    optimizer.step()
    assert (layer.rho - bound).abs().min() > 0.5  # really out of range now

    x = torch.randn(2, 3, 4, 4)
    out_in, out_ln = _stats(x)
    torch.testing.assert_close(layer(x), out_in if bound == 1.0 else out_ln, atol=1e-5, rtol=1e-5)

    assert clip_rho_(layer) == 1
    assert torch.equal(layer.rho, torch.full_like(layer.rho, bound))


def test_rho_in_range_receives_gradients() -> None:
    layer = AdaLIN(3)
    x = torch.randn(2, 3, 4, 4)
    layer(x, torch.randn(2, 3), torch.zeros(2, 3)).pow(2).sum().backward()
    assert layer.rho.grad is not None and layer.rho.grad.abs().sum() > 0


def test_clip_rho_reaches_every_adalin_in_the_generator() -> None:
    net = build_generator("resnet_unet_adalin", ngf=8)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, AdaLIN):
                module.rho.fill_(1.7)
    assert clip_rho_(net) == 2
    assert all(torch.all(m.rho == 1.0) for m in net.modules() if isinstance(m, AdaLIN))


# --- the article's generator -----------------------------------------------------------------------


def test_adalin_generator_concatenates_same_size_encoder_features() -> None:
    net: ResnetUnetAdaLINGenerator = build_generator("resnet_unet_adalin", ngf=8)  # type: ignore[assignment]
    assert [block.conv.in_channels for block in net.decoder] == [32 + 16, 16 + 8]
    assert [block.conv.out_channels for block in net.decoder] == [16, 8]
    assert isinstance(net.decoder[0].upsample, nn.Upsample) and net.decoder[0].upsample.mode == "nearest"
    assert len(net.bottleneck) == 6


def test_adalin_generator_style_mlp_and_skips_are_in_the_graph() -> None:
    net = build_generator("resnet_unet_adalin", ngf=8)
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    for name in (
        "mlp.0.weight",
        "gamma.0.weight",
        "beta.1.weight",
        "decoder.1.norm.rho",
        "encoder.0.1.weight",
    ):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_adalin_generator_output_depends_on_the_style_of_the_whole_image() -> None:
    """gamma/beta come from globally pooled features: changing one corner changes a far-away pixel."""
    torch.manual_seed(0)
    net = build_generator("resnet_unet_adalin", ngf=8).eval()
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., :4, :4] += 3.0
    with torch.no_grad():
        assert not torch.allclose(net(x)[..., -1, -1], net(y)[..., -1, -1])
