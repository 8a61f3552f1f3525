"""GAN, gradient-penalty, cycle and identity losses on tensors with known values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cyclegan_core.training.losses import GANLoss, cycle_loss, gradient_penalty, identity_loss


def test_lsgan_is_zero_on_its_target_and_mse_otherwise() -> None:
    loss = GANLoss("lsgan")
    ones = torch.ones(2, 1, 4, 4)
    assert loss(ones, True).item() == 0.0
    assert loss(ones, False).item() == pytest.approx(1.0)
    assert loss(torch.full((3, 1, 2, 2), 0.5), True).item() == pytest.approx(0.25)


def test_lsgan_is_the_default_mode() -> None:
    assert GANLoss().mode == "lsgan"


def test_vanilla_matches_the_closed_form_bce_on_logits() -> None:
    loss = GANLoss("vanilla")
    logits = torch.tensor([[-2.0, 0.0, 3.0]])
    sigmoid = torch.sigmoid(logits)
    expected_real = -torch.log(sigmoid).mean().item()
    expected_fake = -torch.log(1 - sigmoid).mean().item()
    assert loss(logits, True).item() == pytest.approx(expected_real, rel=1e-6)
    assert loss(logits, False).item() == pytest.approx(expected_fake, rel=1e-6)
    assert loss(torch.zeros(5), True).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_hinge_discriminator_and_generator_terms() -> None:
    loss = GANLoss("hinge")
    scores = torch.tensor([-2.0, 0.5, 3.0])
    # relu(1 - x): 3, 0.5, 0 ; relu(1 + x): 0, 1.5, 4
    assert loss(scores, True).item() == pytest.approx((3.0 + 0.5 + 0.0) / 3)
    assert loss(scores, False).item() == pytest.approx((0.0 + 1.5 + 4.0) / 3)
    assert loss(scores, True, for_discriminator=False).item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="target_is_real=True"):
        loss(scores, False, for_discriminator=False)


def test_wgangp_is_minus_mean_for_real_and_mean_for_fake() -> None:
    loss = GANLoss("wgangp")
    scores = torch.tensor([1.0, 2.0, 6.0])
    assert loss(scores, True).item() == pytest.approx(-3.0)
    assert loss(scores, False).item() == pytest.approx(3.0)


def test_losses_are_fp32_for_low_precision_predictions() -> None:
    for mode in ("lsgan", "vanilla", "hinge", "wgangp"):
        assert GANLoss(mode)(torch.ones(4, dtype=torch.bfloat16), True).dtype == torch.float32


def test_unknown_gan_mode_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="lsgan"):
        GANLoss("wasserstein")  # type: ignore[arg-type]


def test_gradient_penalty_of_a_linear_critic_is_closed_form() -> None:
    # D(x) = sum(w * x) has gradient w everywhere: penalty = lambda * (||w|| - 1)^2
    critic = nn.Conv2d(1, 1, kernel_size=2, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]]]))  # ||w|| = 5
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    penalty = gradient_penalty(critic, real, fake, lambda_gp=10.0)
    assert penalty.item() == pytest.approx(10.0 * (5.0 - 1.0) ** 2, rel=1e-5)


def test_gradient_penalty_backpropagates_into_the_critic() -> None:
    critic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 1, 3))
    fake = torch.randn(2, 3, 8, 8, requires_grad=True)
    penalty = gradient_penalty(critic, torch.randn(2, 3, 8, 8), fake)
    penalty.backward()
    # every weight shapes the input gradient (the last bias does not, so it is skipped)
    weights = [critic[0].weight, critic[0].bias, critic[2].weight]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
    assert fake.grad is None  # the fakes are detached: the penalty trains only the critic


def test_gradient_penalty_is_taken_at_a_random_interpolation_of_real_and_fake() -> None:
    critic = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Tanh(), nn.Conv2d(2, 1, 1))
    real, fake = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    torch.manual_seed(7)
    penalty = gradient_penalty(critic, real, fake, lambda_gp=2.0).item()
    torch.manual_seed(7)  # the interpolation weights come from the global torch RNG
    alpha = torch.rand(2, 1, 1, 1)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x)
    expected = 2.0 * ((grad.reshape(2, -1).norm(dim=1) - 1.0) ** 2).mean().item()
    assert penalty == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, real, fake[:1])


def test_cycle_and_identity_are_weighted_l1() -> None:
    original = torch.zeros(1, 3, 2, 2)
    output = torch.full((1, 3, 2, 2), 0.25)
    assert cycle_loss(output, original, 10.0).item() == pytest.approx(2.5)
    assert identity_loss(output, original, 0.5 * 10.0).item() == pytest.approx(1.25)
