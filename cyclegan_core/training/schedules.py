"""Learning-rate schedules, stepped once per epoch (official ``models/networks.py: get_scheduler``).

- ``linear``: the initial rate for ``n_epochs`` epochs, then a linear decay towards zero over
  ``n_epochs_decay`` epochs: factor ``1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)``
  (the official ``lambda_rule`` with ``epoch_count = 1``).
- ``step``: x0.1 every ``lr_decay_iters`` epochs.
- ``cosine``: cosine annealing to 0 over ``n_epochs + n_epochs_decay`` epochs.
"""

from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, StepLR

from cyclegan_core.config import TrainConfig


def linear_decay_factor(epoch: int, *, n_epochs: int, n_epochs_decay: int) -> float:
    """Multiplier of the initial learning rate during (0-based) ``epoch`` under the ``linear`` policy."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig) -> LRScheduler:
    """The scheduler of ``cfg.lr_policy`` for ``optimizer``; call ``.step()`` at the end of each epoch."""
    if cfg.lr_policy == "linear":
        n_epochs, n_epochs_decay = cfg.n_epochs, cfg.n_epochs_decay

        def factor(epoch: int) -> float:
            return linear_decay_factor(epoch, n_epochs=n_epochs, n_epochs_decay=n_epochs_decay)

        return LambdaLR(optimizer, lr_lambda=factor)
    if cfg.lr_policy == "step":
        return StepLR(optimizer, step_size=cfg.lr_decay_iters, gamma=0.1)
    if cfg.lr_policy == "cosine":
        # T_max=0 would divide by zero; a zero-epoch schedule is never stepped anyway
        return CosineAnnealingLR(optimizer, T_max=max(1, cfg.total_epochs), eta_min=0.0)
    raise ValueError(f"lr_policy must be 'linear', 'step' or 'cosine', got {cfg.lr_policy!r}")


def replay_schedule(optimizer: Optimizer, cfg: TrainConfig, epoch: int) -> LRScheduler:
    """A fresh scheduler of ``cfg`` for ``optimizer``, stepped ``epoch`` times as a straight run would be
    (resuming with a changed schedule: the saved rate belongs to the old one)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = cfg.lr
    scheduler = build_scheduler(optimizer, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(epoch):
            scheduler.step()
    return scheduler
