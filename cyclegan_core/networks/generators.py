"""Generators: the official CycleGAN ResNet and U-Net generators, and the article's ResNet-U-Net with AdaLIN.

``ResnetGenerator`` and ``UnetGenerator`` reproduce the module tree of the official implementation
(junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py) index for index, so their state-dict keys
and shapes equal the official ones and an official ``latest_net_G_A.pth`` loads with ``strict=True``:

- ResNet (Johnson et al. 2016): an ``nn.Sequential`` named ``model`` -- 7x7 conv, two stride-2 3x3
  convs, ``n_blocks`` residual blocks (each an ``nn.Sequential`` named ``conv_block``), two
  transposed convs, 7x7 conv, tanh. Keys look like ``model.1.weight``, ``model.10.conv_block.1.weight``.
- U-Net (Ronneberger et al. 2015; pix2pix): nested ``UnetSkipConnectionBlock`` modules, each holding
  an ``nn.Sequential`` named ``model`` whose middle entry is the next block. Keys look like
  ``model.model.1.model.3.model.3.weight``.

``ResnetUnetAdaLINGenerator`` is the article's generator: the ResNet encoder and residual bottleneck,
then a decoder of nearest-neighbour x2 upsampling + 3x3 conv that concatenates the same-resolution
encoder features (U-Net skips) before each conv and normalises with AdaLIN, whose per-sample
gamma/beta come from an MLP over the globally average-pooled bottleneck (U-GAT-IT, Kim et al. 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan_core.networks.norms import AdaLIN, NormFactory, conv_bias, norm_factory


class ResnetBlock(nn.Module):
    """Residual block: x + [pad, conv3x3, norm, ReLU, (dropout), pad, conv3x3, norm](x)."""

    def __init__(self, dim: int, *, norm: str, dropout: bool) -> None:
        super().__init__()
        make_norm = norm_factory(norm)
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _encoder_layers(input_nc: int, ngf: int, make_norm: NormFactory, bias: bool) -> list[list[nn.Module]]:
    """The ResNet encoder as three stages: 7x7 conv to ngf, then two stride-2 convs doubling channels."""
    stages: list[list[nn.Module]] = [[
        nn.ReflectionPad2d(3),
        nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=bias),
        make_norm(ngf),
        nn.ReLU(True),
    ]]
    for i in range(2):
        channels = ngf * 2**i
        stages.append([
            nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=bias),
            make_norm(channels * 2),
            nn.ReLU(True),
        ])
    return stages


class ResnetGenerator(nn.Module):
    """The official ResNet generator (``resnet_9blocks`` / ``resnet_6blocks``). Input H, W: multiples of 4."""

    def __init__(
        self, input_nc: int = 3, output_nc: int = 3, *, ngf: int = 64, n_blocks: int = 9,
        norm: str = "instance", dropout: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        make_norm = norm_factory(norm)
        bias = conv_bias(norm)
        layers = [layer for stage in _encoder_layers(input_nc, ngf, make_norm, bias) for layer in stage]
        layers += [ResnetBlock(ngf * 4, norm=norm, dropout=dropout) for _ in range(n_blocks)]
        for i in range(2):
            channels = ngf * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, kernel_size=3, stride=2, padding=1,
                                   output_padding=1, bias=bias),
                make_norm(channels // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down(x) -> submodule -> up, concatenated with x (except the outermost level).

    ``outer_nc`` channels enter and leave the level (``input_nc`` may differ at the outermost one);
    ``inner_nc`` channels go to the submodule.
    """

    def __init__(
        self, outer_nc: int, inner_nc: int, *, input_nc: int | None = None,
        submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
        norm: str = "instance", dropout: bool = False,
    ) -> None:
        super().__init__()
        if outermost and innermost:
            raise ValueError("a U-Net block cannot be both outermost and innermost")
        if innermost != (submodule is None):
            raise ValueError("an innermost U-Net block has no submodule; every other block needs one")
        self.outermost = outermost
        make_norm = norm_factory(norm)
        bias = conv_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        if outermost:
            assert submodule is not None
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [down_conv, submodule, nn.ReLU(True), up_conv, nn.Tanh()]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True), up_conv, make_norm(outer_nc)]
        else:
            assert submodule is not None
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1,
                                         bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, make_norm(inner_nc), submodule,
                      nn.ReLU(True), up_conv, make_norm(outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """The official U-Net generator with ``num_downs`` halvings (7: ``unet_128``, 8: ``unet_256``).

    Input H, W must be multiples of ``2**num_downs`` (the bottleneck is 1x1 at the nominal size).
    Dropout, when enabled, applies to the ``num_downs - 5`` innermost non-innermost levels (official).
    """

    def __init__(
        self, input_nc: int = 3, output_nc: int = 3, *, num_downs: int = 8, ngf: int = 64,
        norm: str = "instance", dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        for outer_mult, inner_mult in ((4, 8), (2, 4), (1, 2)):
            block = UnetSkipConnectionBlock(ngf * outer_mult, ngf * inner_mult, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AdaLINUpBlock(nn.Module):
    """Decoder stage: nearest x2 upsample, concat the skip features, pad + 3x3 conv, AdaLIN, ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.pad = nn.ReflectionPad2d(1)
        # No bias: AdaLIN's beta shifts every channel anyway.
        self.conv = nn.Conv2d(in_channels + skip_channels, out_channels, kernel_size=3, padding=0, bias=False)
        self.norm = AdaLIN(out_channels)
        self.relu = nn.ReLU(True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor
                ) -> torch.Tensor:
        x = torch.cat([self.upsample(x), skip], dim=1)
        return self.relu(self.norm(self.conv(self.pad(x)), gamma, beta))


class ResnetUnetAdaLINGenerator(nn.Module):
    """The article's generator (``resnet_unet_adalin``); input H, W: multiples of 4.

    Encoder (same layers as the official ResNet: 7x7 conv to ``ngf``, two stride-2 3x3 convs doubling
    channels), ``n_blocks`` residual blocks at ``4 * ngf``, an MLP mapping the average-pooled bottleneck
    to one (gamma, beta) pair per decoder stage (gamma predicted as 1 + linear(style)), two
    ``AdaLINUpBlock`` stages halving channels with U-Net skips from the encoder stage of the same
    resolution, and a 7x7 conv + tanh.
    """

    def __init__(
        self, input_nc: int = 3, output_nc: int = 3, *, ngf: int = 64, n_blocks: int = 6,
        norm: str = "instance", dropout: bool = False,
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm)
        bias = conv_bias(norm)
        self.encoder = nn.ModuleList(nn.Sequential(*stage) for stage in
                                     _encoder_layers(input_nc, ngf, make_norm, bias))
        bottleneck = ngf * 4
        self.bottleneck = nn.Sequential(*(ResnetBlock(bottleneck, norm=norm, dropout=dropout)
                                          for _ in range(n_blocks)))
        self.mlp = nn.Sequential(
            nn.Linear(bottleneck, bottleneck), nn.ReLU(True),
            nn.Linear(bottleneck, bottleneck), nn.ReLU(True),
        )
        # Stage i maps 4ngf -> 2ngf (skip from the 2ngf encoder stage), then 2ngf -> ngf (skip: ngf).
        stage_channels = [(ngf * 4, ngf * 2, ngf * 2), (ngf * 2, ngf, ngf)]
        self.decoder = nn.ModuleList(AdaLINUpBlock(c_in, c_skip, c_out)
                                     for c_in, c_skip, c_out in stage_channels)
        self.gamma = nn.ModuleList(nn.Linear(bottleneck, c_out, bias=False) for _, _, c_out in stage_channels)
        self.beta = nn.ModuleList(nn.Linear(bottleneck, c_out, bias=False) for _, _, c_out in stage_channels)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),
                                  nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        x = self.bottleneck(x)
        style = self.mlp(x.mean(dim=(2, 3)))
        skips = reversed(features[:-1])  # same resolution as each decoder stage's output
        for block, to_gamma, to_beta, skip in zip(self.decoder, self.gamma, self.beta, skips, strict=True):
            # gamma = 1 + f(style): with the official N(0, 0.02) init a bare linear head would start
            # gamma near 0 and silence the decoder; this starts AdaLIN near a plain normalisation.
            x = block(x, skip, 1.0 + to_gamma(style), to_beta(style))
        return self.head(x)
