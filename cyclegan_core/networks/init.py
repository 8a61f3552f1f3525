"""Weight initialisation with the official CycleGAN semantics (``init_weights`` in networks.py).

Conv, transposed-conv and linear weights are drawn by the named scheme and their biases set to 0;
BatchNorm weights are drawn from N(1, gain) and their biases set to 0. Everything else (instance
norm has no parameters; AdaLIN/ILN keep their own rho/gamma/beta defaults) is left untouched.
"""

from __future__ import annotations

import logging
from typing import get_args

from torch import nn

from cyclegan_core.config import InitName

logger = logging.getLogger(__name__)

INIT_NAMES: tuple[str, ...] = get_args(InitName)

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
             nn.Linear)


def _init_weight(weight: nn.Parameter, init_type: str, gain: float) -> None:
    if init_type == "normal":
        nn.init.normal_(weight, 0.0, gain)
    elif init_type == "xavier":
        nn.init.xavier_normal_(weight, gain=gain)
    elif init_type == "kaiming":
        # The official code ignores the gain for kaiming.
        nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
    elif init_type == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain)
    else:
        raise ValueError(f"unknown init_type {init_type!r}; expected one of {', '.join(INIT_NAMES)}")


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise ``net`` in place (see module docstring) and return it."""
    if init_type not in INIT_NAMES:
        raise ValueError(f"unknown init_type {init_type!r}; expected one of {', '.join(INIT_NAMES)}")
    for module in net.modules():
        if isinstance(module, _WEIGHTED):
            _init_weight(module.weight, init_type, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
    logger.debug("initialised %s with %s (gain %s)", type(net).__name__, init_type, gain)
    return net
