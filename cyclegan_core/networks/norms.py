"""Normalisation layers: the official CycleGAN norm factory and U-GAT-IT's AdaLIN / ILN.

``norm_factory(name)`` turns ``"instance" | "batch" | "none"`` into a ``channels -> nn.Module``
factory, with the official semantics (junyanz/pytorch-CycleGAN-and-pix2pix, ``get_norm_layer``):
instance norm has neither affine parameters nor running statistics, batch norm is affine and tracks
running statistics, and ``"none"`` yields ``nn.Identity`` so module indices (hence checkpoint keys)
do not shift.

AdaLIN and ILN come from U-GAT-IT (Kim et al. 2020, arXiv:1907.10830). Both mix instance-normalised
and layer-normalised features with a learnable per-channel ratio ``rho`` kept in [0, 1]:
``out = rho * IN(x) + (1 - rho) * LN(x)``, then scale and shift. AdaLIN takes its per-sample
``gamma``/``beta`` as inputs (predicted by an MLP); ILN learns them as parameters.

Keeping rho in [0, 1]: the forward pass always uses ``rho.clamp(0, 1)``, so an optimizer step that
pushes the stored value out of range can never produce an out-of-range mix. Because a clamped value
gets no gradient, ``clip_rho_(module)`` (U-GAT-IT's ``RhoClipper``) also projects the stored values
back into range; the training loop calls it after each optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch
from torch import nn

from cyclegan_core.config import NormName

NormFactory = Callable[[int], nn.Module]

NORM_NAMES: tuple[str, ...] = get_args(NormName)


def norm_factory(name: str) -> NormFactory:
    """A ``channels -> layer`` factory for the named normalisation."""
    if name == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if name == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if name == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {name!r}; expected one of {', '.join(NORM_NAMES)}")


def conv_bias(norm: str) -> bool:
    """Whether a conv followed by this norm carries a bias.

    Batch norm's shift makes a bias redundant, so the official code drops it there; with instance
    norm it keeps it (a checkpoint-compatibility detail: the keys ``*.bias`` exist). With no norm a
    bias is needed (the official code drops it there too, which we consider a bug and do not copy).
    """
    norm_factory(name=norm)  # validates the name
    return norm != "batch"


def _instance_and_layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Biased variance, as nn.InstanceNorm2d and nn.LayerNorm use.
    in_var, in_mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    ln_var, ln_mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
    return (x - in_mean) * torch.rsqrt(in_var + eps), (x - ln_mean) * torch.rsqrt(ln_var + eps)


class RhoMix(nn.Module):
    """Shared part of AdaLIN and ILN: the clamped rho mixing of IN and LN features (the layers whose
    statistics tiled inference gathers, with InstanceNorm2d: ``cyclegan_core.inference.tiling``)."""

    def __init__(self, num_features: int, *, rho_init: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.rho = nn.Parameter(torch.full((1, num_features, 1, 1), rho_init))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects N x {self.num_features} x H x W, "
                f"got {tuple(x.shape)}"
            )
        out_in, out_ln = _instance_and_layer_norm(x, self.eps)
        rho = self.rho.clamp(0.0, 1.0)
        return rho * out_in + (1.0 - rho) * out_ln

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class AdaLIN(RhoMix):
    """Adaptive Layer-Instance Normalisation: per-sample ``gamma``, ``beta`` of shape (N, C) are inputs.

    rho starts at 0.9 (mostly instance norm), as in U-GAT-IT.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, rho_init=0.9, eps=eps)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        expected = (x.shape[0], self.num_features)
        if tuple(gamma.shape) != expected or tuple(beta.shape) != expected:
            raise ValueError(
                f"AdaLIN({self.num_features}) expects gamma and beta of shape {expected}, "
                f"got {tuple(gamma.shape)} and {tuple(beta.shape)}"
            )
        return self.mix(x) * gamma[:, :, None, None] + beta[:, :, None, None]


class ILN(RhoMix):
    """Layer-Instance Normalisation with learned per-channel ``gamma`` (1) and ``beta`` (0).

    rho starts at 0 (pure layer norm), as in U-GAT-IT.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, rho_init=0.0, eps=eps)
        self.gamma = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x) * self.gamma + self.beta


@torch.no_grad()
def clip_rho_(module: nn.Module) -> int:
    """Clamp the stored rho of every AdaLIN/ILN inside ``module`` to [0, 1] in place.

    Call after each optimizer step (U-GAT-IT's RhoClipper). Returns how many layers were clipped.
    """
    layers = [m for m in module.modules() if isinstance(m, RhoMix)]
    for layer in layers:
        layer.rho.clamp_(0.0, 1.0)
    return len(layers)
