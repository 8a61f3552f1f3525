"""Loss terms of the CycleGAN objective: adversarial (GANLoss), gradient penalty, cycle and identity.

Semantics follow the official implementation (junyanz/pytorch-CycleGAN-and-pix2pix,
``models/networks.py``: ``GANLoss``, ``cal_gradient_penalty``; ``models/cycle_gan_model.py``:
``backward_G``). Every loss is computed in fp32, whatever dtype the network produced under autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cyclegan_core.config import GanMode

GAN_MODES: tuple[GanMode, ...] = ("lsgan", "vanilla", "hinge", "wgangp")


class GANLoss:
    """Adversarial loss for one ``gan_mode``; call it as ``loss(prediction, target_is_real)``.

    - ``lsgan`` (default): MSE against the label 1 (real) or 0 (fake) (Mao et al. 2017).
    - ``vanilla``: binary cross-entropy on logits against 1 / 0 (Goodfellow et al. 2014).
    - ``hinge``: discriminator ``relu(1 - D(real))`` / ``relu(1 + D(fake))``; generator ``-D(fake)``,
      selected with ``for_discriminator=False`` (Lim & Ye 2017; Miyato et al. 2018).
    - ``wgangp``: ``-mean`` for real, ``mean`` for fake (Gulrajani et al. 2017); add
      :func:`gradient_penalty` to the discriminator loss.

    A generator asks for its fakes to be judged real: ``loss(D(fake), True, for_discriminator=False)``.
    Only ``hinge`` distinguishes the two roles; the other modes ignore ``for_discriminator``.
    """

    def __init__(self, mode: GanMode = "lsgan") -> None:
        if mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {mode!r}")
        self.mode = mode

    def __repr__(self) -> str:
        return f"GANLoss(mode={self.mode!r})"

    def __call__(self, prediction: Tensor, target_is_real: bool, *, for_discriminator: bool = True) -> Tensor:
        prediction = prediction.float()
        if self.mode in ("lsgan", "vanilla"):
            target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
            if self.mode == "lsgan":
                return F.mse_loss(prediction, target)
            return F.binary_cross_entropy_with_logits(prediction, target)
        if self.mode == "hinge":
            if not for_discriminator:
                if not target_is_real:
                    raise ValueError("hinge generator loss is defined for target_is_real=True only")
                return -prediction.mean()
            if target_is_real:
                return F.relu(1.0 - prediction).mean()
            return F.relu(1.0 + prediction).mean()
        # wgangp: critic scores, no labels
        return -prediction.mean() if target_is_real else prediction.mean()


def gradient_penalty(
    discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, *, lambda_gp: float = 10.0
) -> Tensor:
    """WGAN-GP penalty ``lambda_gp * mean((||grad D(x)||_2 - 1)^2)`` (``cal_gradient_penalty``, type "mixed").

    ``x`` is a per-sample uniform interpolation between ``real`` and ``fake`` (detached; Gulrajani et al.
    2017), drawn from the global torch RNG. The graph is kept (``create_graph=True``) so the penalty
    back-propagates into the discriminator's weights.
    """
    if lambda_gp == 0.0:
        return real.new_zeros((), dtype=torch.float32)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    interpolates = alpha * real.detach() + (1.0 - alpha) * fake.detach()
    interpolates.requires_grad_(True)
    scores = discriminator(interpolates).float()
    (gradients,) = torch.autograd.grad(
        outputs=scores,
        inputs=interpolates,
        grad_outputs=torch.ones_like(scores),
        create_graph=True,
        retain_graph=True,
    )
    gradients = gradients.float().reshape(real.shape[0], -1)
    # the official code adds 1e-16 before the norm so its gradient is finite at 0
    return (((gradients + 1e-16).norm(2, dim=1) - 1.0) ** 2).mean() * lambda_gp


def cycle_loss(reconstructed: Tensor, original: Tensor, weight: float) -> Tensor:
    """``weight * L1(F(G(x)), x)``: the cycle-consistency term (official ``lambda_A`` / ``lambda_B`` = 10)."""
    return F.l1_loss(reconstructed.float(), original.float()) * weight


def identity_loss(same_domain_output: Tensor, original: Tensor, weight: float) -> Tensor:
    """``weight * L1(G(y), y)`` for a generator fed an image of its own output domain.

    The official weights are ``lambda_identity * lambda_B`` for ``idt_A = G_AB(real_B)`` and
    ``lambda_identity * lambda_A`` for ``idt_B = G_BA(real_A)``; the caller passes the product.
    """
    return F.l1_loss(same_domain_output.float(), original.float()) * weight
