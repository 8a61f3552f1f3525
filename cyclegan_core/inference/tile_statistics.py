"""The whole image's statistics in every tile: Thumbnail Instance Normalization for tiled inference.

A tile normalises with its own statistics, not the image's, which shows as seams
(upstream junyanz/pytorch-CycleGAN-and-pix2pix#206). ``capture_statistics`` records every layer that
summarises the whole image (InstanceNorm2d, AdaLIN/ILN, the AdaLIN generator's style MLP) during one
pass over a box-downscaled copy of the image, and ``with_frozen_statistics`` gives a copy of the
generator (sharing its weights) whose layers use those values in every tile: Thumbnail Instance
Normalization (Chen et al., AAAI 2022). Once the statistics are fixed the network is local, so tiles
agree with each other wherever their receptive fields are inside the tile.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cyclegan_core.networks.generators import ResnetUnetAdaLINGenerator
from cyclegan_core.networks.norms import ILN, AdaLIN, RhoMix


def _global_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The layers whose output depends on statistics of the whole input, by qualified name."""
    layers: dict[str, nn.Module] = {}
    for name, module in net.named_modules():
        if isinstance(module, (nn.InstanceNorm2d, RhoMix)):
            layers[name] = module
        elif isinstance(module, ResnetUnetAdaLINGenerator):
            layers[f"{name}.mlp" if name else "mlp"] = module.mlp
    return layers

Statistics = dict[str, tuple[torch.Tensor, ...]]


def _input_statistics(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.float()
    in_var, in_mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    if isinstance(module, RhoMix):
        ln_var, ln_mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
        return in_mean, in_var, ln_mean, ln_var
    return in_mean, in_var


@torch.no_grad()
def capture_statistics(net: nn.Module, image: torch.Tensor) -> Statistics:
    """Run ``net`` on ``image`` (1 x C x h x w) and record each global layer's input statistics (the
    style MLP's output); returns them by layer name."""
    recorded: Statistics = {}
    handles = []
    for name, module in _global_layers(net).items():
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, name: str = name) -> None:
            if isinstance(module, (nn.InstanceNorm2d, RhoMix)):
                recorded[name] = _input_statistics(module, inputs[0])
            else:
                recorded[name] = (output.detach().float(),)
        handles.append(module.register_forward_hook(hook))
    try:
        net(image)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


class FrozenInstanceNorm(nn.Module):
    """``nn.InstanceNorm2d`` with given per-channel mean and (biased) variance."""

    def __init__(self, norm: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.norm, self.mean, self.var = norm, mean, var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x - self.mean.to(x.dtype)) * torch.rsqrt(self.var + self.norm.eps).to(x.dtype)
        if self.norm.affine:
            out = out * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]
        return out


class FrozenRhoMix(nn.Module):
    """AdaLIN or ILN with given instance- and layer-norm statistics."""

    def __init__(self, layer: RhoMix, *stats: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.in_mean, self.in_var, self.ln_mean, self.ln_var = stats

    def forward(self, x: torch.Tensor, *style: torch.Tensor) -> torch.Tensor:
        layer, eps = self.layer, self.layer.eps
        rho = layer.rho.clamp(0.0, 1.0)
        mixed = (rho * (x - self.in_mean) * torch.rsqrt(self.in_var + eps)
                 + (1.0 - rho) * (x - self.ln_mean) * torch.rsqrt(self.ln_var + eps))
        if isinstance(layer, AdaLIN):
            gamma, beta = style
            return mixed * gamma[:, :, None, None] + beta[:, :, None, None]
        assert isinstance(layer, ILN)
        return mixed * layer.gamma + layer.beta


class Constant(nn.Module):
    """Returns a fixed tensor whatever its input (the style vector of the whole image)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.to(x.dtype)


def with_frozen_statistics(net: nn.Module, stats: Statistics) -> nn.Module:
    """A copy of ``net`` sharing its parameters and buffers whose global layers use ``stats``."""
    shared = {id(t): t for t in (*net.parameters(), *net.buffers())}
    clone = copy.deepcopy(net, shared)
    for name, module in _global_layers(clone).items():
        if name not in stats:
            raise ValueError(f"no captured statistics for layer {name!r}; capture them with the same network")
        values = stats[name]
        if isinstance(module, nn.InstanceNorm2d):
            replacement: nn.Module = FrozenInstanceNorm(module, *values)
        elif isinstance(module, RhoMix):
            replacement = FrozenRhoMix(module, *values)
        else:
            replacement = Constant(values[0])
        parent_name, _, leaf = name.rpartition(".")
        clone.get_submodule(parent_name)._modules[leaf] = replacement
    return clone


def has_global_layers(net: nn.Module) -> bool:
    """Whether tiles of ``net`` see other statistics than the whole image (instance norm, AdaLIN, ILN)."""
    return bool(_global_layers(net))
