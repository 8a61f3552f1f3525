"""Evaluation during training, the best checkpoint exported and the watchdog, on a real local Ray.

Two Ray fits (~50 s each here): one whose weights are poisoned with NaN once in epoch 3 (rolled back,
the run completes, the exported generators are the best evaluated epoch's, each checkpoint a
LoggedModel of the MLflow run against a real `mlflow server`), one poisoned at every try (the
rollbacks run out: a clear failure, no Ray Train restart into the same fault).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from cyclegan_core.inference.translator import Translator
from cyclegan_core.training.distributed import parameter_checksum
from cyclegan_core.training.fit import FitCallback
from cyclegan_core.training.model import CycleGAN
from pipelines.records import DatasetRef
from pipelines.registry import download_model
from pipelines.registry.logged_models import run_models
from pipelines.tracking.run import open_pipeline_run
from pipelines.train import TrainingError, train_on_ray
from pipelines.train.layout import read_progress
from tests.integration.test_train_ray import (  # noqa: F401 - ingested: the fixture
    STEPS_PER_EPOCH,
    epoch_lines,
    ingested,
    tiny_config,
)

pytestmark = pytest.mark.slow


class PoisonWeights(FitCallback):
    """A worker callback: fill G_AB's first weight with NaN on every rank after global
    step ``at_step``; once per worker process unless ``always`` (a rollback keeps the process)."""

    def __init__(self, at_step: int, *, always: bool = False) -> None:
        self.at_step, self.always, self.fired = at_step, always, False

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        if step == self.at_step and (self.always or not self.fired):
            self.fired = True
            with torch.no_grad():
                next(model.G_AB.parameters()).fill_(math.nan)


@dataclass(frozen=True)
class AwaitCheckpointModel(FitCallback):
    """A worker callback: rank 0, at the last step of each epoch after the first, waits until
    the previous epoch's checkpoint is a READY LoggedModel of run ``run_id``. With num_to_keep=1, Ray may
    delete that checkpoint as soon as this epoch's is committed: this test's epochs (~2 s) are shorter
    than the driver's reading of it may take on a loaded host; a real epoch is minutes."""

    tracking_uri: str
    run_id: str
    steps_per_epoch: int = STEPS_PER_EPOCH
    timeout_s: float = 120.0

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        epoch, rest = divmod(step, self.steps_per_epoch)
        if model.rank != 0 or rest or epoch < 2:
            return
        client = MlflowClient(self.tracking_uri, self.tracking_uri)
        experiment = client.get_run(self.run_id).info.experiment_id
        deadline = time.monotonic() + self.timeout_s
        while not [model for model in client.search_logged_models(
                [experiment], filter_string=f"source_run_id = '{self.run_id}' AND name = 'epoch-{epoch - 1:04d}'")
                if model.status == LoggedModelStatus.READY]:
            assert time.monotonic() < deadline, f"no LoggedModel of epoch {epoch - 1} within {self.timeout_s} s"
            time.sleep(0.2)


def test_a_nan_is_rolled_back_the_run_completes_and_the_best_epoch_is_exported(
    ray_local: None, ingested: DatasetRef, tmp_path: Path, mlflow_server: str,  # noqa: F811 - the fixture
) -> None:
    """Also: each evaluated checkpoint becomes a LoggedModel of the pipeline's MLflow run (logged by the
    driver as Ray commits it), and those Ray's retention dropped lose their weights."""
    config = tiny_config(ingested, tmp_path, run_name="watched", storage_path=str(tmp_path / "runs"), epochs=4,
                         checkpoint_every_epochs=1, num_to_keep=1, max_failures=0)
    config = config.model_copy(update={
        "services": config.services.model_copy(update={"tracking_uri": mlflow_server}),
        "registry": config.registry.model_copy(update={"experiment": f"besteval-{tmp_path.name}"})})
    live, _ = open_pipeline_run(config, run_name="watched", tags={})
    poison = PoisonWeights(at_step=2 * STEPS_PER_EPOCH + 3)  # in epoch 3

    callbacks = [AwaitCheckpointModel(mlflow_server, live.run_id), poison]
    result = train_on_ray(config, ingested, callbacks=callbacks, tracking=live)

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

    client = MlflowClient(mlflow_server, mlflow_server)
    models = sorted(run_models(client, live.run_id), key=lambda model: int(model.tags["epoch"]))
    assert [model.name for model in models] == ["epoch-0001", "epoch-0002", "epoch-0003", "epoch-0004"]
    for model, epoch in zip(models, history, strict=True):
        assert model.tags["checkpoint_uri"].startswith(str(tmp_path / "runs" / result.run_name / "checkpoint_epoch"))
        assert (model.tags["step"], model.tags["training_fingerprint"]) == (str(int(epoch["step"])), config.fingerprint)
        linked = {metric.key: metric for metric in model.metrics}
        assert linked["eval_psnr_AtoB"].value == epoch["eval_psnr_AtoB"]
        assert linked["eval_psnr_AtoB"].step == int(epoch["epoch"]) and linked["eval_psnr_AtoB"].dataset_digest
        files = {entry.path for entry in client.list_logged_model_artifacts(model.model_id)}
        if Path(model.tags["checkpoint_uri"]).name in kept:  # kept by Ray: the generators and the sample grids
            assert "weights_deleted" not in model.tags and {"artifacts", "MLmodel", "samples"} <= files
            assert {"samples/AtoB.png", "samples/BtoA.png"} <= {
                entry.path for entry in client.list_logged_model_artifacts(model.model_id, "samples")}
        else:  # pruned: the record (tags, metrics) stays, the artifacts are gone (the grids are the run's images)
            assert "Ray Train's retention deleted checkpoint" in model.tags["weights_deleted"]
            assert files == set()
    images = [entry.path for entry in client.list_artifacts(live.run_id, "images")]
    for epoch in (1, 2, 3, 4):  # every epoch's sample grids, pruned or not, at its step in the run's images
        assert any(path.startswith(f"images/samples~AtoB+step+{epoch}+") for path in images), images
    best_model = models[best]
    assert "weights_deleted" not in best_model.tags
    served = Translator.from_pretrained(download_model(f"models:/{best_model.model_id}", tmp_path / "best",
                                                       tracking_uri=mlflow_server), device="cpu")
    assert parameter_checksum(served.generator("AtoB")) == history[best]["G_AB_checksum_rank0"]


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
        train_on_ray(config, ingested, callbacks=[poison])
    assert "already rolled back 1 time(s) (watchdog.max_rollbacks=1)" in str(failed.value)
    assert failed.value.checkpoint_uri is not None and "checkpoint_epoch0001" in failed.value.checkpoint_uri
    # the workers stopped; Ray Train did not restart them into the same fault (max_failures=2)
    assert not [r for r in caplog.records if "Ray Train restarts" in r.getMessage()]
    assert [line.split()[1] for line in epoch_lines(caplog)] == ["1/3"]
