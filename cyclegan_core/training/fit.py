"""The one training loop: ``fit(model, loader, total_epochs=..., seed=...)`` runs epochs of ``train_step``.

The Ray Train worker (``pipelines.train.worker``) and the benchmarks run this loop, so a benchmark
measures what the pipeline runs. Each epoch ``e`` first reseeds the global RNGs with
``epoch_seed(seed, e, rank)`` and sets the sampler's epoch: every random draw of an epoch is then a
function of ``(seed, e, rank)``, which makes a resume at an epoch boundary exact. ``end_epoch`` (LR
schedules) follows each full epoch (after the epoch, as the paper and the official code before 2020 do).
Everything else a caller runs in the loop (the Ray worker's epoch report, a test's fault injection) is a
``FitCallback``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cyclegan_core.training.model import CycleGAN
from cyclegan_core.training.rng import seed_everything


class EpochSampler(Protocol):
    def set_epoch(self, epoch: int) -> None: ...


class EpochLoader(Protocol):
    """What ``fit`` iterates: a DataLoader from ``cyclegan_core.data.dataset.build_dataloader``."""

    sampler: EpochSampler

    def __iter__(self) -> Any: ...

    def __len__(self) -> int: ...


@dataclass
class EpochStats:
    """What one call of ``train_epoch`` did."""

    steps: int = 0
    seconds: float = 0.0
    stopped: bool = False  # max_steps was reached (possibly before the loader ran out)
    loss_sums: dict[str, float] = field(default_factory=dict)

    def images_per_s(self, batch_size: int, world_size: int = 1) -> float:
        """Images per domain per second over all ranks (one A and one B image count as one)."""
        return self.steps * batch_size * world_size / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class EpochEnd:
    """What ``on_epoch_end`` receives after each epoch (this rank's figures)."""

    epoch: int  # 0-based index of the epoch that ran
    progress: float  # epochs done: epoch + 1, or fractional when max_steps cut the epoch short
    steps: int
    seconds: float
    stopped: bool  # max_steps was reached
    partial: bool  # stopped before the loader ran out: end_epoch was not called
    loss_sums: dict[str, float]
    lr: float  # the learning rate the epoch trained at
    images_per_s: float  # per domain, over all ranks
    gpu_mem_peak_gb: float | None  # peak CUDA memory of the epoch; None off CUDA

    @property
    def loss_means(self) -> dict[str, float]:
        return {key: value / max(self.steps, 1) for key, value in self.loss_sums.items()}


class FitCallback:
    """Work ``fit`` runs besides training; override the hooks you need (both do nothing here)."""

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        """After every training step; ``step`` is ``model.step`` (``model.rank`` is the process's rank)."""

    def on_epoch_end(self, model: CycleGAN, end: EpochEnd) -> None:
        """After every epoch, after ``end_epoch`` (so ``model.epoch`` already counts a full epoch); may
        restore an earlier state of ``model`` (a rollback): ``fit`` goes on from ``model.epoch``."""


@dataclass(frozen=True)
class FitResult:
    epochs: list[EpochEnd]
    stopped: bool  # max_steps was reached (at the start or during an epoch)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of all random draws of one worker in one epoch (image pool, augmentation workers)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31 - 1)


def train_epoch(
    model: CycleGAN,
    loader: Iterable[dict[str, Any]],
    *,
    max_steps: int | None = None,
    callbacks: Sequence[FitCallback] = (),
) -> EpochStats:
    """Run ``model.train_step`` on every batch of ``loader`` (until ``model.step`` reaches ``max_steps``).

    Batches move to the model's device with ``non_blocking=True``; the callbacks' ``on_step_end`` runs
    after each step.
    """
    stats = EpochStats()
    start = time.perf_counter()
    for batch in loader:
        losses = model.train_step(
            batch["A"].to(model.device, non_blocking=True), batch["B"].to(model.device, non_blocking=True)
        )
        for key, value in losses.items():
            stats.loss_sums[key] = stats.loss_sums.get(key, 0.0) + float(value)
        stats.steps += 1
        for callback in callbacks:
            callback.on_step_end(model, model.step)
        if max_steps is not None and model.step >= max_steps:
            stats.stopped = True
            break
    stats.seconds = time.perf_counter() - start
    return stats


def max_steps_reached(step: int, max_steps: int | None) -> bool:
    """Whether ``step`` training steps reach the ``max_steps`` cap (None: no cap)."""
    return max_steps is not None and step >= max_steps


def training_done(epoch: int, step: int, *, total_epochs: int, max_steps: int | None) -> bool:
    """Whether a model at ``epoch`` / ``step`` has nothing left to train: what ``fit`` stops at."""
    return epoch >= total_epochs or max_steps_reached(step, max_steps)


def fit(
    model: CycleGAN,
    loader: EpochLoader,
    *,
    total_epochs: int,
    seed: int,
    rank: int = 0,
    max_steps: int | None = None,
    callbacks: Sequence[FitCallback] = (),
) -> FitResult:
    """Train from ``model.epoch`` to ``total_epochs`` (or until ``model.step`` reaches ``max_steps``).

    ``rank`` selects this process's RNG stream (pass the distributed rank); ``callbacks`` run in their
    order after each step and each epoch (see ``FitCallback``).
    """
    epochs: list[EpochEnd] = []
    stopped = max_steps_reached(model.step, max_steps)
    cuda = model.device.type == "cuda"
    while model.epoch < total_epochs and not stopped:
        epoch = model.epoch
        seed_everything(epoch_seed(seed, epoch, rank))
        loader.sampler.set_epoch(epoch)
        if cuda:
            torch.cuda.reset_peak_memory_stats(model.device)
        stats = train_epoch(model, loader, max_steps=max_steps, callbacks=callbacks)
        stopped, steps = stats.stopped, stats.steps
        partial = stopped and steps < len(loader)
        lr = model.learning_rate()
        if not partial:
            model.end_epoch()
        end = EpochEnd(
            epoch=epoch,
            progress=model.epoch if not partial else epoch + steps / max(len(loader), 1),
            steps=steps,
            seconds=stats.seconds,
            stopped=stopped,
            partial=partial,
            loss_sums=stats.loss_sums,
            lr=lr,
            images_per_s=stats.images_per_s(model.train_cfg.batch_size, model.world_size),
            gpu_mem_peak_gb=torch.cuda.max_memory_allocated(model.device) / 2**30 if cuda else None,
        )
        epochs.append(end)
        for callback in callbacks:
            callback.on_epoch_end(model, end)
        # a watchdog rollback in on_epoch_end may have set model.step (and model.epoch) back
        stopped = max_steps_reached(model.step, max_steps)
    return FitResult(epochs=epochs, stopped=stopped)
