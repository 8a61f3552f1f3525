"""Evaluation during training, the best checkpoint exported and the watchdog, on a real local Ray.

Two Ray fits (~50 s each here): one whose weights are poisoned with NaN once in epoch 3 (rolled back,
the run completes, the exported generators are the best evaluated epoch's), one poisoned at every
try (the rollbacks run out: a clear failure, no Ray Train restart into the same fault).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from cyclegan_core.distributed import parameter_checksum
from cyclegan_core.model import CycleGAN
from cyclegan_core.translator import Translator
from pipelines.records import DatasetRef
from pipelines.train import TrainHooks, TrainingError, train_on_ray
from pipelines.train.layout import read_progress
from tests.integration.test_train_ray import (  # noqa: F401 - ingested: the fixture
    STEPS_PER_EPOCH,
    epoch_lines,
    ingested,
    tiny_config,
)

pytestmark = pytest.mark.slow


class PoisonWeights:
    """``TrainHooks.after_step_model``: fill G_AB's first weight with NaN on every rank after global
    step ``at_step``; once per worker process unless ``always`` (a rollback keeps the process)."""

    def __init__(self, at_step: int, *, always: bool = False) -> None:
        self.at_step, self.always, self.fired = at_step, always, False

    def __call__(self, model: CycleGAN, step: int, rank: int) -> None:
        if step == self.at_step and (self.always or not self.fired):
            self.fired = True
            with torch.no_grad():
                next(model.G_AB.parameters()).fill_(math.nan)


def test_a_nan_is_rolled_back_the_run_completes_and_the_best_epoch_is_exported(
    ray_local: None, ingested: DatasetRef, tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    config = tiny_config(ingested, tmp_path, run_name="watched", storage_path=str(tmp_path / "runs"), epochs=4,
                         checkpoint_every_epochs=1, num_to_keep=1, max_failures=0)
    poison = PoisonWeights(at_step=2 * STEPS_PER_EPOCH + 3)  # in epoch 3

    result = train_on_ray(config, ingested, hooks=TrainHooks(after_step_model=poison))

    history = result.history
    assert [int(h["epoch"]) for h in history] == [1, 2, 3, 4] and result.steps == 4 * STEPS_PER_EPOCH
    assert [h["watchdog_rollbacks"] for h in history] == [0.0, 0.0, 1.0, 1.0]
    assert all(math.isfinite(value) for h in history for value in h.values())
    assert history[2]["lr"] == pytest.approx(history[1]["lr"] * 0.5)  # epoch 3 again, at half the rate
    scores = [h["eval_psnr_AtoB"] for h in history]  # every epoch evaluated on rank 0, shared with rank 1
    assert all("eval_cycle_l1_A" in h and "eval_ssim_AtoB" in h for h in history)
    best = max(range(4), key=lambda index: scores[index])
    assert result.best_epoch == best + 1
    exported = Translator.from_pretrained(result.generators_dir, device="cpu")
    assert parameter_checksum(exported.generator("AtoB")) == history[best]["G_AB_checksum_rank0"]
    assert read_progress(Path(result.checkpoint_uri)).epoch == 4  # the latest is kept for a resume
    kept = sorted(p.name for p in (tmp_path / "runs" / result.run_name).glob("checkpoint_epoch*"))
    assert len(kept) == (1 if best == 3 else 2)  # num_to_keep=1 best + the latest


def test_with_the_rollbacks_spent_the_run_fails_naming_the_epoch_and_the_symptom(
    ray_local: None, ingested: DatasetRef, tmp_path: Path, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    config = tiny_config(ingested, tmp_path, run_name="hopeless", storage_path=str(tmp_path / "runs"), epochs=3,
                         max_failures=2)
    config = config.model_copy(update={"watchdog": config.watchdog.model_copy(update={"max_rollbacks": 1})})
    run_name = config.ray_run_name(ingested.version)
    poison = PoisonWeights(at_step=STEPS_PER_EPOCH + 2, always=True)  # in epoch 2, at every try
    caplog.set_level(logging.INFO, logger="pipelines.train")

    with pytest.raises(TrainingError, match=rf"training run {run_name} stopped by the watchdog: training is "
                                            r"unhealthy at epoch 2 \(step 24\): non-finite loss_") as failed:
        train_on_ray(config, ingested, hooks=TrainHooks(after_step_model=poison))
    assert "already rolled back 1 time(s) (watchdog.max_rollbacks=1)" in str(failed.value)
    assert failed.value.checkpoint_uri is not None and "checkpoint_epoch0001" in failed.value.checkpoint_uri
    # the workers stopped; Ray Train did not restart them into the same fault (max_failures=2)
    assert not [r for r in caplog.records if "Ray Train restarts" in r.getMessage()]
    assert [line.split()[1] for line in epoch_lines(caplog)] == ["1/3"]
