"""What a Ray Train worker does between epochs besides reporting: evaluate, judge, roll back.

``EpochJudge`` (one per worker) decides for each finished epoch whether it is evaluated (every
``eval.every_epochs`` epochs and at each checkpoint, so every checkpoint carries a score), scores the
generators on rank 0 with the final evaluation's code (``cyclegan_core.evaluation.during_training``), logs the
labelled sample grids to the pipeline's MLflow run (and keeps them for the next checkpoint), shares the
``eval_<metric>`` values with every rank,
and asks the watchdog (``cyclegan_core.training.watchdog``) whether the epoch is healthy. A faulty epoch rolls
every rank back to its last healthy in-memory state with lowered learning rates, or, once
``watchdog.max_rollbacks`` are spent, raises ``WatchdogError`` naming the epoch and the symptom (the
worker returns its message and the driver raises it).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cyclegan_core.evaluation.during_training import labelled_grid, model_translator, sample_rows, score_model
from cyclegan_core.training.distributed import all_gather_object
from cyclegan_core.training.model import CycleGAN
from cyclegan_core.training.watchdog import diagnose, lower_learning_rate, non_finite
from pipelines.config import ResolvedConfig
from pipelines.tracking.run import TrackingRun, log_image

if TYPE_CHECKING:
    from PIL.Image import Image

    from cyclegan_core.evaluation.inception import InceptionFeatureExtractor

logger = logging.getLogger(__name__)

NO_SCORE = -1e30  # the score (SCORE_KEY, order "max") of a checkpoint whose primary metric was not computed
ROLLBACKS_KEY = "watchdog_rollbacks"


class WatchdogError(RuntimeError):
    """Training is unhealthy and the watchdog may not roll back again."""


def eval_due(epochs_done: int, *, every: int, checkpoint: bool) -> bool:
    """Evaluate every ``every`` epochs (0: never) and at every checkpoint (when evaluation is on)."""
    return every > 0 and (checkpoint or epochs_done % every == 0)


def checkpoint_score(metrics: dict[str, float], *, primary_key: str, higher_is_better: bool) -> float:
    """The checkpoint's score, larger is better: the primary eval metric (negated when lower is
    better), else ``NO_SCORE``."""
    value = metrics.get(primary_key)
    if value is None:
        return NO_SCORE
    return value if higher_is_better else -value


def snapshot(model: CycleGAN) -> bytes:
    """The full training state in memory (what a rollback restores)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def restore(model: CycleGAN, state: bytes) -> None:
    model.load_state_dict(torch.load(io.BytesIO(state), map_location=model.device, weights_only=True))


@dataclass
class EpochJudge:
    """Evaluation and watchdog of one worker (see the module docstring); ``history`` is the healthy
    epochs' records (the checkpoint's history), shared with the worker."""

    model: CycleGAN
    config: ResolvedConfig
    data_root: Path
    rank: int
    history: list[dict[str, float]]
    tracking: TrackingRun | None = None
    rollbacks: int = 0
    # rank 0: the sample grids of the latest evaluation (written into the next checkpoint folder)
    samples: dict[str, Image] = field(default_factory=dict, repr=False)
    _healthy: bytes = b""
    _healthy_epochs: int = 0
    _lr_scale: float = 1.0  # the rollbacks' LR cuts so far, and those already in the healthy state
    _healthy_lr_scale: float = 1.0
    _extractor: tuple[InceptionFeatureExtractor | None, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.history:
            self.rollbacks = int(self.history[-1].get(ROLLBACKS_KEY, 0))
        self.mark_healthy()

    @property
    def primary_key(self) -> str:
        return f"eval_{self.config.registry.primary_metric}"

    def mark_healthy(self) -> None:
        self._healthy, self._healthy_epochs = snapshot(self.model), len(self.history)
        self._healthy_lr_scale = self._lr_scale

    def extractor(self) -> tuple[InceptionFeatureExtractor | None, str]:
        if self._extractor is None:
            source = self.config.services.inception_weights
            if source is None:
                self._extractor = (None, "no Inception weights configured (eval.inception_weights)")
            else:  # torchvision's Inception, imported only by a worker that computes FID/KID
                from pipelines.clients.inception_weights import load_feature_extractor

                self._extractor = load_feature_extractor(source, self.model.device,
                                                         s3_endpoint_url=self.config.services.s3_endpoint_url,
                                                         s3_region=self.config.services.s3_region)
        return self._extractor

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Rank 0 scores the generators and logs the sample grids; every rank gets its ``eval_`` metrics."""
        scores: dict[str, float] | None = None
        if self.rank == 0:
            settings = self.config.eval
            extractor, reason = self.extractor()
            evaluation = score_model(self.model, self.data_root, max_images=settings.during_training_images,
                                     batch_size=settings.batch_size, extractor=extractor, extractor_reason=reason,
                                     kid_subsets=settings.kid_subsets, kid_subset_size=settings.kid_subset_size)
            # the image counts and the identity baselines do not change during a run
            scores = {f"eval_{name}": value for name, value in evaluation.metrics.items()
                      if not name.startswith("n_images_") and "_identity_" not in name}
            translator = model_translator(self.model)
            self.samples = {}
            for direction in ("AtoB", "BtoA"):
                labels, rows = sample_rows(translator, self.data_root, direction, count=settings.sample_images)
                if rows:
                    self.samples[direction] = labelled_grid(labels, rows, tile=settings.sample_tile)
                    log_image(self.tracking, self.samples[direction], f"samples/{direction}", epoch)
        shared = all_gather_object(scores)[0]
        assert isinstance(shared, dict)
        return shared

    def judge(self, metrics: dict[str, float], *, epoch: int, checkpoint: bool) -> bool:
        """Add the evaluation (when due) and the rollback count to ``metrics``; False when the epoch was
        faulty and the model rolled back (``metrics`` must then not be reported)."""
        rules = self.config.watchdog
        symptom = non_finite(metrics) if rules.enabled else None  # no need to score NaN weights
        if symptom is None and eval_due(epoch, every=self.config.eval.every_epochs, checkpoint=checkpoint):
            metrics.update(self.evaluate(epoch))
        if symptom is None and rules.enabled:
            symptom = diagnose(self.history, metrics, rules, primary_key=self.primary_key,
                               higher_is_better=self.config.registry.higher_is_better)
        if symptom is None:
            metrics[ROLLBACKS_KEY] = float(self.rollbacks)
            return True
        if self.rollbacks >= rules.max_rollbacks:
            raise WatchdogError(
                f"training is unhealthy at epoch {epoch} (step {self.model.step}): {symptom}; the watchdog already "
                f"rolled back {self.rollbacks} time(s) (watchdog.max_rollbacks={rules.max_rollbacks}); lower "
                "train.lr, or raise watchdog.max_rollbacks and re-run to resume from the last checkpoint")
        self.rollbacks += 1
        restore(self.model, self._healthy)
        del self.history[self._healthy_epochs:]
        self._lr_scale *= rules.lr_factor  # a second rollback to the same state cuts the rate again
        lr = lower_learning_rate(self.model, self._lr_scale / self._healthy_lr_scale)
        if self.rank == 0:
            logger.warning("watchdog: epoch %d is unhealthy (%s); rolled back to epoch %d, step %d with the "
                           "learning rate lowered to %.3g (rollback %d of %d)", epoch, symptom, self.model.epoch,
                           self.model.step, lr, self.rollbacks, rules.max_rollbacks)
        return False

    def healthy(self, metrics: dict[str, float]) -> None:
        """Record a healthy epoch; an evaluated one becomes the state a rollback returns to."""
        self.history.append(metrics)
        if any(key.startswith("eval_") for key in metrics) or self.config.eval.every_epochs == 0:
            self.mark_healthy()
