"""LR schedules: values at given epochs for the linear, step and cosine policies."""

from __future__ import annotations

import math

import pytest
import torch

from cyclegan_core.config import TrainConfig
from cyclegan_core.training.schedules import build_scheduler, linear_decay_factor


def lrs_per_epoch(cfg: TrainConfig, epochs: int) -> list[float]:
    """Learning rate in force during each epoch 0..epochs-1 (stepped once at each epoch's end)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_linear_is_constant_then_decays_like_the_official_lambda_rule() -> None:
    cfg = TrainConfig(lr=1.0, lr_policy="linear", n_epochs=3, n_epochs_decay=4)
    lrs = lrs_per_epoch(cfg, 8)
    # 1 - max(0, e + 1 - 3) / 5
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


def test_linear_factor_matches_the_official_formula_for_the_default_100_100() -> None:
    assert linear_decay_factor(0, n_epochs=100, n_epochs_decay=100) == 1.0
    assert linear_decay_factor(99, n_epochs=100, n_epochs_decay=100) == 1.0
    assert linear_decay_factor(100, n_epochs=100, n_epochs_decay=100) == pytest.approx(1 - 1 / 101)
    assert linear_decay_factor(150, n_epochs=100, n_epochs_decay=100) == pytest.approx(1 - 51 / 101)
    # the last trained epoch (199) still has 1/101 of the rate; zero would be reached at epoch 200
    assert linear_decay_factor(199, n_epochs=100, n_epochs_decay=100) == pytest.approx(1 / 101)
    assert linear_decay_factor(200, n_epochs=100, n_epochs_decay=100) == 0.0


def test_step_multiplies_by_a_tenth_every_lr_decay_iters_epochs() -> None:
    cfg = TrainConfig(lr=1.0, lr_policy="step", lr_decay_iters=2)
    assert lrs_per_epoch(cfg, 6) == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_cosine_anneals_to_zero_over_all_epochs() -> None:
    cfg = TrainConfig(lr=2.0, lr_policy="cosine", n_epochs=2, n_epochs_decay=2)
    expected = [1.0 + math.cos(math.pi * e / 4) for e in range(5)]
    assert lrs_per_epoch(cfg, 5) == pytest.approx(expected, abs=1e-12)
    assert lrs_per_epoch(cfg, 5)[-1] == pytest.approx(0.0, abs=1e-12)


def test_scheduler_state_round_trips() -> None:
    cfg = TrainConfig(lr=1.0, lr_policy="linear", n_epochs=1, n_epochs_decay=3)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh = build_scheduler(fresh_optimizer, cfg)
    fresh.load_state_dict(state)
    fresh_optimizer.step()
    fresh.step()
    optimizer.step()
    scheduler.step()
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
