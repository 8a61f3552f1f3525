"""fit / train_epoch: the one training loop (what the Ray worker and the benchmarks run)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cyclegan_core.config import DataConfig, ModelConfig, TrainConfig
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.training.checkpoint import load_checkpoint, save_checkpoint
from cyclegan_core.training.fit import EpochEnd, EpochStats, FitCallback, epoch_seed, fit, train_epoch
from cyclegan_core.training.model import LOSS_KEYS, CycleGAN

TINY = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=4, ndf=4)
# dropout and a pool: the step draws from the global RNG and the pools' own generators
RESUME = TINY.model_copy(update={"dropout": True})
TRAIN = TrainConfig(batch_size=2, pool_size=3, n_epochs=1, n_epochs_decay=2, seed=3)
DATA = DataConfig(preprocess="resize_and_crop", load_size=20, crop_size=16, max_images=6, num_workers=0)


def loader(n: int, batch: int = 2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [{"A": torch.rand(batch, 3, 16, 16, generator=generator) * 2 - 1,
             "B": torch.rand(batch, 3, 16, 16, generator=generator) * 2 - 1} for _ in range(n)]


def epoch_loader(root: Path) -> torch.utils.data.DataLoader:
    """3 batches of 2 per epoch, random B partners, crops and flips (all a function of seed and epoch)."""
    dataset = UnpairedDataset(root, DATA, phase="train", seed=TRAIN.seed)
    return build_dataloader(dataset, batch_size=TRAIN.batch_size, num_workers=0, seed=TRAIN.seed)


class Recorder(FitCallback):
    """Records each step (with the torch seed in force during it) and each epoch's end."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.ends: list[EpochEnd] = []

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        self.steps.append((step, torch.initial_seed()))

    def on_epoch_end(self, model: CycleGAN, end: EpochEnd) -> None:
        self.ends.append(end)


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
    recorder = Recorder()
    stats = train_epoch(model, loader(5), max_steps=2, callbacks=[recorder])
    seen = [step for step, _ in recorder.steps]
    assert (stats.steps, stats.stopped, model.step, seen) == (2, True, 2, [1, 2])


def test_images_per_s_counts_every_rank() -> None:
    stats = EpochStats(steps=10, seconds=4.0)
    assert stats.images_per_s(2) == 5.0 and stats.images_per_s(2, world_size=4) == 20.0


def test_fit_reseeds_sets_the_sampler_epoch_and_reports_every_epoch(synthetic_dataset: Path) -> None:
    batches = epoch_loader(synthetic_dataset)
    model = CycleGAN(TINY, TRAIN)
    recorder = Recorder()

    result = fit(model, batches, total_epochs=3, seed=TRAIN.seed, rank=1, callbacks=[recorder])
    seeds, ends = recorder.steps, recorder.ends  # (step, torch seed in force during it), the epochs' ends

    assert result.epochs == ends and not result.stopped
    assert (model.epoch, model.step, batches.sampler.epoch) == (3, 9, 2)
    assert seeds == [(step, epoch_seed(TRAIN.seed, (step - 1) // 3, 1)) for step in range(1, 10)]
    assert [(e.epoch, e.progress, e.steps, e.partial, e.stopped) for e in ends] == [
        (0, 1, 3, False, False), (1, 2, 3, False, False), (2, 3, 3, False, False)]
    # the rate each epoch trained at: linear policy, 1 constant epoch then 2 decaying ones
    assert [e.lr for e in ends] == pytest.approx([TRAIN.lr, TRAIN.lr * 2 / 3, TRAIN.lr / 3])
    for end in ends:
        assert set(end.loss_sums) == set(LOSS_KEYS) and end.seconds > 0 and end.gpu_mem_peak_gb is None
        assert end.loss_means == {k: v / 3 for k, v in end.loss_sums.items()}
        assert end.images_per_s == pytest.approx(3 * TRAIN.batch_size / end.seconds)


def test_max_steps_cuts_the_epoch_short_without_ending_it(synthetic_dataset: Path) -> None:
    batches = epoch_loader(synthetic_dataset)
    model = CycleGAN(TINY, TRAIN)
    result = fit(model, batches, total_epochs=3, seed=TRAIN.seed, max_steps=4)
    first, second = result.epochs
    assert (first.partial, first.stopped, first.progress) == (False, False, 1)
    assert (second.partial, second.stopped, second.steps, second.progress) == (True, True, 1, 1 + 1 / 3)
    assert result.stopped and (model.epoch, model.step) == (1, 4)
    # the schedule stepped after the full epoch only
    assert model.learning_rate() == second.lr == pytest.approx(TRAIN.lr * 2 / 3)
    assert fit(model, batches, total_epochs=3, seed=TRAIN.seed, max_steps=4) == type(result)([], True)


def assert_equal_states(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_equal_states(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_states(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("stop_after", [1, 2])
def test_fit_resumed_from_a_checkpoint_ends_in_the_state_of_a_straight_fit(
    synthetic_dataset: Path, tmp_path: Path, stop_after: int
) -> None:
    straight = CycleGAN(RESUME, TRAIN)
    fit(straight, epoch_loader(synthetic_dataset), total_epochs=3, seed=TRAIN.seed)

    first = CycleGAN(RESUME, TRAIN)
    fit(first, epoch_loader(synthetic_dataset), total_epochs=stop_after, seed=TRAIN.seed)
    path = save_checkpoint(first, tmp_path / "cyclegan.pt")
    del first
    torch.rand(1000), random.random(), np.random.rand()  # a new process starts in another RNG state
    resumed = CycleGAN(RESUME, TRAIN)
    load_checkpoint(resumed, path)
    result = fit(resumed, epoch_loader(synthetic_dataset), total_epochs=3, seed=TRAIN.seed)

    assert [end.epoch for end in result.epochs] == list(range(stop_after, 3))
    assert (resumed.epoch, resumed.step) == (straight.epoch, straight.step) == (3, 9)
    assert_equal_states(straight.state_dict(), resumed.state_dict())
