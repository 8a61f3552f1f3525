"""One pass over a DataLoader with the CycleGAN training step: ``train_epoch(model, loader)``.

The Ray Train worker (``pipelines.train``) and the training-loop benchmark (``benchmarks/train_loop.py``)
both run this function, so the benchmark measures the loop the pipeline runs. Batches move to the
model's device with ``non_blocking=True`` (``build_dataloader`` pins memory when CUDA is available).
The caller sets the epoch (``loader.sampler.set_epoch``) and seeds before calling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cyclegan_core.model import CycleGAN


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


def train_epoch(
    model: CycleGAN,
    loader: Iterable[dict[str, Any]],
    *,
    max_steps: int | None = None,
    after_step: Callable[[int], None] | None = None,
) -> EpochStats:
    """Run ``model.train_step`` on every batch of ``loader`` (until ``model.step`` reaches ``max_steps``).

    ``after_step(model.step)`` runs after each step (the fault-injection hook of the Ray tests).
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
        if after_step is not None:
            after_step(model.step)
        if max_steps is not None and model.step >= max_steps:
            stats.stopped = True
            break
    stats.seconds = time.perf_counter() - start
    return stats
