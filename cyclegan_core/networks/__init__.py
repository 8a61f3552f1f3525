"""Networks by name: ``build_generator`` / ``build_discriminator`` (the official ``define_G`` / ``define_D``).

Generators: ``resnet_9blocks``, ``resnet_6blocks``, ``unet_128``, ``unet_256`` (official architectures,
checkpoint-compatible) and ``resnet_unet_adalin`` (the article's ResNet-U-Net with AdaLIN).
Discriminators: ``basic`` (70x70 PatchGAN), ``n_layers`` (PatchGAN of any depth), ``pixel`` (1x1).
Every network is initialised with ``init_weights`` (official semantics) before it is returned.
``cyclegan_core.networks.official`` tells which generator a bare (official) state dict is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

from torch import nn

from cyclegan_core.config import DiscriminatorName, GeneratorName, ModelConfig
from cyclegan_core.networks.discriminators import NLayerDiscriminator, PixelDiscriminator
from cyclegan_core.networks.generators import ResnetGenerator, ResnetUnetAdaLINGenerator, UnetGenerator
from cyclegan_core.networks.init import init_weights
from cyclegan_core.networks.norms import ILN, AdaLIN, clip_rho_, norm_factory

__all__ = [
    "DISCRIMINATOR_NAMES",
    "GENERATOR_NAMES",
    "ILN",
    "AdaLIN",
    "build_discriminator",
    "build_generator",
    "clip_rho_",
    "count_parameters",
    "discriminator_from_config",
    "generator_from_config",
    "init_weights",
    "norm_factory",
    "size_multiple",
]

GENERATOR_NAMES: tuple[str, ...] = get_args(GeneratorName)
DISCRIMINATOR_NAMES: tuple[str, ...] = get_args(DiscriminatorName)

GeneratorBuilder = Callable[[int, int, int, str, bool], nn.Module]

# name -> (builder(input_nc, output_nc, ngf, norm, dropout), multiple that input H and W must be of)
_GENERATORS: dict[str, tuple[GeneratorBuilder, int]] = {
    "resnet_9blocks": (lambda i, o, ngf, norm, drop: ResnetGenerator(
        i, o, ngf=ngf, n_blocks=9, norm=norm, dropout=drop), 4),
    "resnet_6blocks": (lambda i, o, ngf, norm, drop: ResnetGenerator(
        i, o, ngf=ngf, n_blocks=6, norm=norm, dropout=drop), 4),
    "unet_128": (lambda i, o, ngf, norm, drop: UnetGenerator(
        i, o, num_downs=7, ngf=ngf, norm=norm, dropout=drop), 2**7),
    "unet_256": (lambda i, o, ngf, norm, drop: UnetGenerator(
        i, o, num_downs=8, ngf=ngf, norm=norm, dropout=drop), 2**8),
    "resnet_unet_adalin": (lambda i, o, ngf, norm, drop: ResnetUnetAdaLINGenerator(
        i, o, ngf=ngf, n_blocks=6, norm=norm, dropout=drop), 4),
}
assert set(_GENERATORS) == set(GENERATOR_NAMES), "registry and config.GeneratorName disagree"


def _unknown(kind: str, name: str, known: tuple[str, ...]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(known)}")


def build_generator(
    name: str, *, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: str = "instance",
    dropout: bool = False, init_type: str = "normal", init_gain: float = 0.02,
) -> nn.Module:
    """A freshly initialised generator by name (see module docstring)."""
    if name not in _GENERATORS:
        raise _unknown("generator", name, GENERATOR_NAMES)
    builder, _ = _GENERATORS[name]
    return init_weights(builder(input_nc, output_nc, ngf, norm, dropout), init_type, init_gain)


def build_discriminator(
    name: str, *, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
    init_type: str = "normal", init_gain: float = 0.02,
) -> nn.Module:
    """A freshly initialised discriminator by name; ``n_layers`` is used by ``n_layers`` only."""
    if name == "basic":
        net: nn.Module = NLayerDiscriminator(input_nc, ndf=ndf, n_layers=3, norm=norm)
    elif name == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf=ndf, n_layers=n_layers, norm=norm)
    elif name == "pixel":
        net = PixelDiscriminator(input_nc, ndf=ndf, norm=norm)
    else:
        raise _unknown("discriminator", name, DISCRIMINATOR_NAMES)
    return init_weights(net, init_type, init_gain)


def generator_from_config(cfg: ModelConfig) -> nn.Module:
    """The A->B generator of ``cfg`` (B->A swaps ``input_nc`` and ``output_nc``: build it directly)."""
    return build_generator(cfg.generator, input_nc=cfg.input_nc, output_nc=cfg.output_nc, ngf=cfg.ngf,
                           norm=cfg.norm, dropout=cfg.dropout, init_type=cfg.init_type,
                           init_gain=cfg.init_gain)


def discriminator_from_config(cfg: ModelConfig, *, input_nc: int | None = None) -> nn.Module:
    """A discriminator of ``cfg``; ``input_nc`` defaults to ``cfg.output_nc`` (D_B judges domain B)."""
    return build_discriminator(cfg.discriminator, input_nc=cfg.output_nc if input_nc is None else input_nc,
                               ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm=cfg.norm,
                               init_type=cfg.init_type, init_gain=cfg.init_gain)


def size_multiple(generator_name: str) -> int:
    """Input height and width must be multiples of this for the named generator."""
    if generator_name not in _GENERATORS:
        raise _unknown("generator", generator_name, GENERATOR_NAMES)
    return _GENERATORS[generator_name][1]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (shared ones counted once), like the official ``print_networks``."""
    return sum(p.numel() for p in module.parameters())
