"""The GAN health watchdog: symptoms, the rollback with a lowered learning rate, failing when spent."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cyclegan_core.training.fit import EpochEnd, FitCallback, fit
from cyclegan_core.training.model import CycleGAN
from cyclegan_core.training.watchdog import WatchdogConfig, diagnose, lower_learning_rate
from pipelines.config import EvalSettings, PipelineConfig, resolve
from pipelines.train.monitor import (
    NO_SCORE,
    ROLLBACKS_KEY,
    EpochJudge,
    WatchdogError,
    checkpoint_score,
    eval_due,
)
from pipelines.train.progress import epoch_metrics
from tests.unit.core.test_during_training import DATA, MODEL, TRAIN, loader

RULES = WatchdogConfig(d_loss_floor=0.05, collapse_evaluations=3, metric_drop=2.0)


def record(d: float = 0.5, g: float = 1.0, psnr: float | None = 20.0, **extra: float) -> dict[str, float]:
    metrics = {"loss_D_A": d, "loss_G_A": g, "loss_D_B": 0.5, "loss_G_B": 1.0, **extra}
    if psnr is not None:
        metrics["eval_psnr_AtoB"] = psnr
    return metrics


def check(history: list[dict[str, float]], current: dict[str, float]) -> str | None:
    return diagnose(history, current, RULES, primary_key="eval_psnr_AtoB", higher_is_better=True)


def test_a_healthy_epoch_has_no_symptom() -> None:
    assert check([record(), record(psnr=None)], record(psnr=19.0)) is None


def test_a_non_finite_loss_or_metric_is_named() -> None:
    assert check([], record(g=math.nan, psnr=None)) == "non-finite loss_G_A=nan"
    assert check([], record(psnr=math.inf)) == "non-finite eval_psnr_AtoB=inf"


def test_a_discriminator_near_zero_while_its_generator_climbs_for_n_evaluations_is_a_collapse() -> None:
    history = [record(d=0.01, g=1.0), record(d=0.5, g=1.5, psnr=None), record(d=0.02, g=2.0)]
    symptom = check(history, record(d=0.01, g=3.0))
    assert symptom is not None and symptom.startswith("discriminator collapse: D_A loss under 0.05")
    assert "G_A rose from 1 to 3" in symptom
    assert check(history[:2], record(d=0.01, g=3.0)) is None  # only two evaluations so far
    assert check(history, record(d=0.01, g=1.9)) is None  # G's loss fell: no collapse
    assert check(history, record(d=0.2, g=3.0)) is None  # D's loss is not near zero


def test_a_primary_metric_far_below_its_best_is_a_collapse() -> None:
    symptom = check([record(psnr=20.0), record(psnr=22.0)], record(psnr=19.5))
    assert symptom == "eval_psnr_AtoB collapsed to 19.5 (best so far 22, allowed drop 2)"
    assert check([record(psnr=20.0), record(psnr=22.0)], record(psnr=20.5)) is None
    lower = diagnose([record(psnr=1.0)], record(psnr=3.5), RULES, primary_key="eval_psnr_AtoB",
                     higher_is_better=False)
    assert lower is not None and "collapsed to 3.5" in lower


def test_lowering_the_learning_rate_scales_the_rate_and_its_schedule() -> None:
    model, reference = CycleGAN(MODEL, TRAIN), CycleGAN(MODEL, TRAIN)
    assert lower_learning_rate(model, 0.5) == pytest.approx(TRAIN.lr * 0.5)
    for net in (model, reference):
        net.end_epoch()
        net.end_epoch()
    assert model.learning_rate() == pytest.approx(reference.learning_rate() * 0.5)
    assert model.optimizer_D.param_groups[0]["lr"] == pytest.approx(reference.optimizer_D.param_groups[0]["lr"] * 0.5)


def test_checkpoints_are_evaluated_and_scored() -> None:
    assert [eval_due(e, every=2, checkpoint=False) for e in (1, 2, 3, 4)] == [False, True, False, True]
    assert eval_due(3, every=2, checkpoint=True) and not eval_due(3, every=0, checkpoint=True)
    assert checkpoint_score({"eval_l1": 0.2}, primary_key="eval_l1", higher_is_better=False) == -0.2
    assert checkpoint_score({}, primary_key="eval_l1", higher_is_better=True) == NO_SCORE


class PoisonOnce(FitCallback):
    """Fills G_AB's first weight with NaN after ``step`` (once, or every time with ``always``)."""

    def __init__(self, step: int, *, always: bool = False) -> None:
        self.step, self.always, self.fired = step, always, 0

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        if step == self.step and (self.always or not self.fired):
            self.fired += 1
            with torch.no_grad():
                next(model.G_AB.parameters()).fill_(math.nan)


class JudgeEpochs(FitCallback):
    """The worker's epoch report without Ray: epoch records, judge, healthy."""

    def __init__(self, judge: EpochJudge) -> None:
        self.judge = judge

    def on_epoch_end(self, model: CycleGAN, end: EpochEnd) -> None:
        metrics = epoch_metrics(end, step=model.step, total_epochs=TRAIN.total_epochs, nodes=1,
                                loss_means=end.loss_means, checksums=[0.0])
        if self.judge.judge(metrics, epoch=model.epoch, checkpoint=True):
            self.judge.healthy(metrics)


def watched_fit(root: Path, poison_step: int, *, always: bool, max_rollbacks: int) -> tuple[CycleGAN, EpochJudge]:
    """fit as the Ray worker runs it (epoch records, judge, healthy), in this process."""
    config = resolve(PipelineConfig(dataset_uri="s3://bucket/data", model=MODEL, train=TRAIN, data=DATA,
                                    eval=EvalSettings(during_training_images=2, sample_images=1),
                                    watchdog=WatchdogConfig(max_rollbacks=max_rollbacks, lr_factor=0.25)), env={})
    model = CycleGAN(MODEL, TRAIN)
    judge = EpochJudge(model, config, root, 0, [])
    fit(model, loader(root), total_epochs=TRAIN.total_epochs, seed=TRAIN.seed,
        callbacks=[PoisonOnce(poison_step, always=always), JudgeEpochs(judge)])
    return model, judge


def test_a_nan_is_rolled_back_and_training_completes_at_a_lower_rate(synthetic_dataset: Path) -> None:
    model, judge = watched_fit(synthetic_dataset, poison_step=4, always=False, max_rollbacks=1)  # epoch 2 of 2
    assert (model.epoch, judge.rollbacks) == (2, 1)
    assert [r["epoch"] for r in judge.history] == [1.0, 2.0]
    assert [r[ROLLBACKS_KEY] for r in judge.history] == [0.0, 1.0]
    assert all(math.isfinite(value) for r in judge.history for value in r.values())
    scheduled = CycleGAN(MODEL, TRAIN)
    scheduled.end_epoch()
    assert judge.history[1]["lr"] == pytest.approx(scheduled.learning_rate() * 0.25)  # epoch 2 at the lowered rate
    assert all(torch.isfinite(p).all() for p in model.G_AB.parameters())


def test_with_rollbacks_spent_training_fails_naming_the_epoch_and_the_symptom(synthetic_dataset: Path) -> None:
    with pytest.raises(WatchdogError, match=r"unhealthy at epoch 2 \(step 6\): non-finite loss_.*already rolled "
                                            r"back 1 time\(s\) \(watchdog.max_rollbacks=1\)"):
        watched_fit(synthetic_dataset, poison_step=4, always=True, max_rollbacks=1)


def test_each_rollback_to_the_same_healthy_state_cuts_the_rate_again(synthetic_dataset: Path) -> None:
    config = resolve(PipelineConfig(dataset_uri="s3://bucket/data", model=MODEL, train=TRAIN, data=DATA,
                                    eval=EvalSettings(every_epochs=0),
                                    watchdog=WatchdogConfig(max_rollbacks=3, lr_factor=0.5)), env={})
    model = CycleGAN(MODEL, TRAIN)
    judge = EpochJudge(model, config, synthetic_dataset, 0, [])
    faulty = {"epoch": 1.0, "loss_G_A": math.nan}
    for rollbacks in (1, 2):
        assert not judge.judge(dict(faulty), epoch=1, checkpoint=False)
        assert (judge.rollbacks, model.learning_rate()) == (rollbacks, pytest.approx(TRAIN.lr * 0.5**rollbacks))
    judge.healthy({"epoch": 1.0, "loss_G_A": 1.0})  # the new healthy state carries the lowered rate
    assert not judge.judge(dict(faulty), epoch=2, checkpoint=False)
    assert model.learning_rate() == pytest.approx(TRAIN.lr * 0.5**3)
    assert judge.judge({"epoch": 2.0, "loss_G_A": 1.0}, epoch=2, checkpoint=False)


def test_an_evaluated_epoch_gets_the_eval_metrics_that_move(synthetic_dataset: Path) -> None:
    config = resolve(PipelineConfig(dataset_uri="s3://bucket/data", model=MODEL, train=TRAIN, data=DATA,
                                    eval=EvalSettings(every_epochs=2, during_training_images=2, sample_images=1)),
                     env={})
    judge = EpochJudge(CycleGAN(MODEL, TRAIN), config, synthetic_dataset, 0, [])
    unevaluated = {"epoch": 1.0, "loss_G_A": 1.0}
    assert judge.judge(unevaluated, epoch=1, checkpoint=False) and set(unevaluated) == {"epoch", "loss_G_A",
                                                                                         ROLLBACKS_KEY}
    evaluated = {"epoch": 2.0, "loss_G_A": 1.0}
    assert judge.judge(evaluated, epoch=2, checkpoint=False)
    assert {"eval_psnr_AtoB", "eval_ssim_AtoB", "eval_psnr_gain_AtoB", "eval_cycle_l1_A", "eval_cycle_l1_B"} <= set(
        evaluated)
    assert not any("identity" in key or "n_images" in key or "fid" in key for key in evaluated)
