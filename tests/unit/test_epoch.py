"""train_epoch: one pass of the training step over a loader (the loop the Ray worker runs)."""

from __future__ import annotations

import pytest
import torch

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.epoch import EpochStats, train_epoch
from cyclegan_core.model import LOSS_KEYS, CycleGAN

TINY = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=4, ndf=4)


def loader(n: int, batch: int = 2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [{"A": torch.rand(batch, 3, 16, 16, generator=generator) * 2 - 1,
             "B": torch.rand(batch, 3, 16, 16, generator=generator) * 2 - 1} for _ in range(n)]


def test_runs_every_batch_and_sums_the_losses() -> None:
    model = CycleGAN(TINY, TrainConfig(batch_size=2))
    batches = loader(3)
    reference = CycleGAN(TINY, TrainConfig(batch_size=2))
    expected = [reference.train_step(b["A"], b["B"]) for b in batches]

    stats = train_epoch(model, batches)
    assert (stats.steps, stats.stopped, model.step) == (3, False, 3)
    assert set(stats.loss_sums) >= set(LOSS_KEYS)
    for key in LOSS_KEYS:
        assert stats.loss_sums[key] == pytest.approx(sum(step[key] for step in expected), rel=1e-5)
    assert stats.seconds > 0


def test_stops_at_max_steps_and_calls_the_hook_after_each_step() -> None:
    model = CycleGAN(TINY, TrainConfig(batch_size=2))
    seen: list[int] = []
    stats = train_epoch(model, loader(5), max_steps=2, after_step=seen.append)
    assert (stats.steps, stats.stopped, model.step, seen) == (2, True, 2, [1, 2])


def test_images_per_s_counts_every_rank() -> None:
    stats = EpochStats(steps=10, seconds=4.0)
    assert stats.images_per_s(2) == 5.0 and stats.images_per_s(2, world_size=4) == 20.0
