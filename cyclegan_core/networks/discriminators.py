"""Discriminators of the official CycleGAN: the PatchGAN (``basic`` = 3 layers, 70x70 receptive field;
``n_layers`` = any depth) and the 1x1 PixelGAN (``pixel``).

Module trees match junyanz/pytorch-CycleGAN-and-pix2pix (``NLayerDiscriminator`` is an
``nn.Sequential`` named ``model``, ``PixelDiscriminator`` one named ``net``), so official ``*_net_D_*.pth``
checkpoints load with ``strict=True``. Both output raw scores (no sigmoid): the GAN loss decides.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan_core.networks.norms import conv_bias, norm_factory


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4x4 convs (channels doubling, capped at 8 x ndf), one stride-1
    conv, and a 1-channel 4x4 conv giving one score per overlapping patch."""

    def __init__(self, input_nc: int = 3, *, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        make_norm = norm_factory(norm)
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=bias),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """PixelGAN: 1x1 convs, one score per pixel."""

    def __init__(self, input_nc: int = 3, *, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        make_norm = norm_factory(norm)
        bias = conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=bias),
            make_norm(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
