"""The GAN health watchdog: which symptom an epoch's metrics show, and the learning-rate cut of a rollback.

``diagnose(history, current, rules)`` looks at one epoch's record (the flat ``loss_<name>`` /
``eval_<name>`` metrics of ``pipelines.train.progress.epoch_metrics``) against the healthy epochs
before it and names the first symptom: a non-finite loss or evaluation metric; a discriminator that
collapsed (its loss under ``d_loss_floor`` while its generator's adversarial loss rose at each of the
last ``collapse_evaluations`` evaluations: D_A with G_A, D_B with G_B); a primary metric that fell
more than ``metric_drop`` below its best. The worker then rolls back to the last healthy state and
``lower_learning_rate`` cuts both optimizers' rates (and their schedules) by ``lr_factor``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from cyclegan_core.config import StrictModel

if TYPE_CHECKING:
    from cyclegan_core.training.model import CycleGAN

# (discriminator loss, the adversarial loss of the generator it judges): D_A scores G_AB's fake B (G_A)
ADVERSARIES = (("loss_D_A", "loss_G_A"), ("loss_D_B", "loss_G_B"))


class WatchdogConfig(StrictModel):
    """When a training run rolls back (and how often it may), and what counts as a fault."""

    enabled: bool = True
    max_rollbacks: int = Field(2, ge=0, description="rollbacks a run may do before it fails")
    lr_factor: float = Field(0.5, gt=0, le=1, description="each rollback multiplies the learning rates by this")
    d_loss_floor: float = Field(0.01, ge=0, description="a discriminator loss under this counts as collapsed")
    collapse_evaluations: int = Field(3, ge=2, description="evaluations in a row that make a collapse")
    metric_drop: float | None = Field(
        None, gt=0, description="a primary eval metric this far below its best is a collapse (None: off)")


def is_evaluated(record: dict[str, float]) -> bool:
    return any(key.startswith("eval_") for key in record)


def non_finite(record: dict[str, float]) -> str | None:
    """The non-finite losses (then eval metrics) of ``record``, the first four by name."""
    bad = [f"{key}={record[key]}" for key in sorted(record, key=lambda key: (not key.startswith("loss_"), key))
           if key.startswith(("loss_", "eval_")) and not math.isfinite(record[key])]
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    return f"non-finite {', '.join(bad[:4])}{more}" if bad else None


def discriminator_collapse(evaluated: Sequence[dict[str, float]], *, floor: float, evaluations: int) -> str | None:
    """The collapse of D_A or D_B over the last ``evaluations`` evaluated records (oldest first)."""
    if len(evaluated) < evaluations:
        return None
    window = evaluated[-evaluations:]
    for d_key, g_key in ADVERSARIES:
        if not all(d_key in r and g_key in r for r in window):
            continue
        d_low = all(r[d_key] < floor for r in window)
        g_rising = all(later[g_key] > earlier[g_key] for earlier, later in itertools.pairwise(window))
        if d_low and g_rising:
            return (f"discriminator collapse: {d_key[5:]} loss under {floor:g} for {evaluations} evaluations "
                    f"({window[-1][d_key]:.3g} now) while {g_key[5:]} rose from {window[0][g_key]:.3g} to "
                    f"{window[-1][g_key]:.3g}")
    return None


def metric_collapse(evaluated: Sequence[dict[str, float]], current: dict[str, float], *, key: str,
                    higher_is_better: bool, drop: float) -> str | None:
    """``current[key]`` is more than ``drop`` worse than the best of ``evaluated`` (earlier records)."""
    earlier = [r[key] for r in evaluated if key in r]
    if key not in current or not earlier:
        return None
    best = max(earlier) if higher_is_better else min(earlier)
    loss = best - current[key] if higher_is_better else current[key] - best
    if loss > drop:
        return f"{key} collapsed to {current[key]:.4g} (best so far {best:.4g}, allowed drop {drop:g})"
    return None


def diagnose(history: Sequence[dict[str, float]], current: dict[str, float], rules: WatchdogConfig, *,
             primary_key: str, higher_is_better: bool) -> str | None:
    """The symptom ``current`` shows after the healthy records ``history``, or None when it is healthy."""
    symptom = non_finite(current)
    if symptom or not is_evaluated(current):
        return symptom
    earlier = [record for record in history if is_evaluated(record)]
    symptom = discriminator_collapse([*earlier, current], floor=rules.d_loss_floor,
                                     evaluations=rules.collapse_evaluations)
    if symptom is None and rules.metric_drop is not None:
        symptom = metric_collapse(earlier, current, key=primary_key, higher_is_better=higher_is_better,
                                  drop=rules.metric_drop)
    return symptom


def lower_learning_rate(model: CycleGAN, factor: float) -> float:
    """Multiply both optimizers' rates and their schedules' base rates by ``factor``; the new rate."""
    for optimizer, scheduler in ((model.optimizer_G, model.scheduler_G), (model.optimizer_D, model.scheduler_D)):
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return model.learning_rate()
