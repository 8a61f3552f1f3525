"""Which generator a bare state dict is: architecture inference for official CycleGAN checkpoints.

An official ``latest_net_G_A.pth`` (junyanz/pytorch-CycleGAN-and-pix2pix) carries no options, but its
keys and shapes say what it is: ``ngf`` and ``input_nc`` from the first conv, ``output_nc`` from the
last, the residual block count or U-Net depth from the module indices, batch norm from affine norm
weights (official instance norm is ``affine=False``: no keys), ResNet dropout from the index shift it
causes inside each ``conv_block``. ``infer_generator_config`` builds every candidate on the meta device
and keeps those whose layout equals the file's exactly. U-Net dropout sits after the last layer of a
level (no index shift) and is off at inference, so it is reported as not recorded.

``clean_official_state`` makes the clean-ups official ``BaseModel.load_networks`` makes: the ``module.``
prefix of DataParallel checkpoints and the stale InstanceNorm ``running_mean``/``running_var``/
``num_batches_tracked`` entries that checkpoints of old PyTorch versions carry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.networks import GENERATOR_NAMES, generator_from_config

_STALE_STATS = ("running_mean", "running_var", "num_batches_tracked")
_LISTED_KEYS = 8  # how many offending keys a message names
_RESNET_TOP_WEIGHT = re.compile(r"model\.(\d+)\.weight")


def _last_resnet_conv(state: dict[str, torch.Tensor]) -> str:
    indices = [int(m.group(1)) for key, value in state.items()
               if (m := _RESNET_TOP_WEIGHT.fullmatch(key)) and value.dim() == 4]
    return f"model.{max(indices)}.weight" if indices else "model.?.weight"


# name -> (first conv weight key, last conv weight key (from the state), dim of the last one that is output_nc)
_PROBES: dict[str, tuple[str, Callable[[dict[str, torch.Tensor]], str], int]] = {
    "resnet_6blocks": ("model.1.weight", _last_resnet_conv, 0),
    "resnet_9blocks": ("model.1.weight", _last_resnet_conv, 0),
    "unet_128": ("model.model.0.weight", lambda _: "model.model.3.weight", 1),  # ConvTranspose2d: (in, out, ..)
    "unet_256": ("model.model.0.weight", lambda _: "model.model.3.weight", 1),
    "resnet_unet_adalin": ("encoder.0.1.weight", lambda _: "head.1.weight", 0),
}
assert set(_PROBES) == set(GENERATOR_NAMES), "architecture probes and GENERATOR_NAMES disagree"
_NORMS = ("instance", "batch")  # the official options; "none" has no state of its own to recognise


class ArchitectureError(ValueError):
    """A state dict matches no known generator, or more than one."""


@dataclass(frozen=True)
class Candidate:
    """One architecture tried against a state dict, and how it differs (None: it matches)."""

    config: ModelConfig
    mismatch: str | None
    differences: int  # keys missing, unexpected or of another shape

    @property
    def label(self) -> str:
        return describe_config(self.config)


def describe_config(cfg: ModelConfig) -> str:
    """``resnet_9blocks (norm=instance, ngf=64, 3->3 channels, dropout off)``."""
    return (f"{cfg.generator} (norm={cfg.norm}, ngf={cfg.ngf}, {cfg.input_nc}->{cfg.output_nc} channels, "
            f"dropout {'on' if cfg.dropout else 'off'})")


def _layout(cfg: ModelConfig) -> tuple[nn.Module, dict[str, torch.Size]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost, no RNG draws
        net = generator_from_config(cfg)
    return net, {key: value.shape for key, value in net.state_dict().items()}


def clean_official_state(state: dict[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` without ``module.`` prefixes and without stale statistics of ``net``'s stat-less InstanceNorms."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    instance_norms = {name for name, module in net.named_modules()
                      if isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats}
    return {key: value for key, value in state.items()
            if not (key.rpartition(".")[2] in _STALE_STATS and key.rpartition(".")[0] in instance_norms)}


def compare_layout(expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> tuple[int, str | None]:
    """How many keys of ``found`` are missing, unexpected or of another shape than ``expected``, and
    those differences in words (None if there are none)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{key}: file {tuple(found[key].shape)} vs model {tuple(expected[key])}"
              for key in expected if key in found and found[key].shape != expected[key]]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > _LISTED_KEYS else ""
            problems.append(f"{label}: {', '.join(items[:_LISTED_KEYS]) + more}")
    return len(missing) + len(unexpected) + len(shapes), "; ".join(problems) or None


def _probe_dims(name: str, state: dict[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """(ngf, input_nc, output_nc) read from the first and last conv of ``name``'s layout, if present."""
    first_key, last_key, out_dim = _PROBES[name]
    first, last = state.get(first_key), state.get(last_key(state))
    if first is None or last is None or first.dim() != 4 or last.dim() != 4:
        return None
    return int(first.shape[0]), int(first.shape[1]), int(last.shape[out_dim])


def candidates(state: dict[str, torch.Tensor]) -> list[Candidate]:
    """Every known architecture whose probe keys ``state`` has, each compared with ``state`` exactly."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    found = []
    for name in GENERATOR_NAMES:
        dims = _probe_dims(name, state)
        if dims is None:
            continue
        ngf, input_nc, output_nc = dims
        for norm in _NORMS:
            for dropout in (False, True):
                cfg = ModelConfig(generator=name, ngf=ngf, input_nc=input_nc, output_nc=output_nc, norm=norm,
                                  dropout=dropout)
                net, layout = _layout(cfg)
                count, mismatch = compare_layout(layout, clean_official_state(state, net))
                found.append(Candidate(cfg, mismatch, count))
    return found


def infer_generator_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig whose generator has exactly ``state``'s keys and shapes.

    Raises ``ArchitectureError`` naming the closest candidate and its differences when none matches,
    or the matches when several differ in more than U-Net dropout (which leaves no trace in the keys).
    """
    tried = candidates(state)
    matches = [candidate.config for candidate in tried if candidate.mismatch is None]
    # a dropout variant with the same layout as the plain one: dropout is not recorded, keep it off
    distinct = [cfg for cfg in matches if not (cfg.dropout and cfg.model_copy(update={"dropout": False}) in matches)]
    if len(distinct) == 1:
        return distinct[0]
    if distinct:
        raise ArchitectureError("the state dict fits several generators: "
                                + "; ".join(describe_config(cfg) for cfg in distinct))
    if not tried:
        probes = sorted({first for first, _, _ in _PROBES.values()})
        keys = sorted(state)
        shown = ", ".join(keys[:_LISTED_KEYS]) + (f", ... ({len(keys)} in all)" if len(keys) > _LISTED_KEYS else "")
        raise ArchitectureError(f"not a known generator state dict: no first conv weight "
                                f"({', '.join(probes)}) with a matching last conv (keys: {shown or 'none'})")
    closest = min(tried, key=lambda candidate: candidate.differences)
    raise ArchitectureError(f"the state dict matches no known generator ({', '.join(GENERATOR_NAMES)} with norm "
                            f"{' or '.join(_NORMS)}); closest is {closest.label}: {closest.mismatch}")
