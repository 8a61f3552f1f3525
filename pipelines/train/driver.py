"""``train_on_ray(config, dataset) -> TrainResult``: run the training of one pipeline run on Ray Train.

The driver connects to Ray, checks the cluster and the checkpoint storage, runs a ``TorchTrainer``
of ``config.scaling.num_workers`` workers (``worker.train_loop_per_worker``) under the run name
``config.ray_run_name(dataset.version)`` and exports the generators of the final checkpoint into
``config.output_dir/<run name>/generators``. Ray Train V2 resumes a run with the same name and storage
from its latest checkpoint by itself: after a worker failure (``run.max_failures``) and when a
retried call starts the same run again.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchTrainer

from cyclegan_core.checkpoint import CheckpointError
from cyclegan_core.translator import Translator
from pipelines.config import ResolvedConfig
from pipelines.records import DatasetRef, TrainResult
from pipelines.train.cluster import aws_credentials, check_cluster, connect_ray, worker_runtime_env
from pipelines.train.layout import CHECKPOINT_FILE, read_progress, read_progress_in_place
from pipelines.train.progress import RunProgress, progress_reporter
from pipelines.train.storage import StorageTarget, last_checkpoint, resolve_storage
from pipelines.train.worker import train_loop_per_worker

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training on Ray failed; ``checkpoint_uri`` is the last good checkpoint (None if there is none)."""

    def __init__(self, message: str, *, checkpoint_uri: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint_uri = checkpoint_uri


@dataclass(frozen=True)
class TrainHooks:
    """Optional extras of ``train_on_ray``.

    ``after_step(step, rank)`` runs on every worker after every training step (shipped to the workers
    by Ray's pickling), e.g. a test that makes a worker die at a given step.
    """

    after_step: Callable[[int, int], None] | None = None


def export_final(checkpoint: Checkpoint, dest: Path) -> RunProgress:
    """Export the generators of ``checkpoint`` into ``dest`` (rebuilt from the checkpoint's own model
    config; replaced atomically) and return the checkpoint's progress."""
    with tempfile.TemporaryDirectory(prefix="cyclegan-final-") as tmp:
        local = Path(tmp) / "checkpoint"
        checkpoint.to_directory(str(local))
        progress = read_progress(local)
        Translator.from_checkpoint(local / CHECKPOINT_FILE).save_pretrained(dest)
    return progress


def check_resumable(storage: StorageTarget, run_name: str, config: ResolvedConfig, dataset: DatasetRef) -> None:
    """Log where the run resumes from, or refuse a run folder trained on another dataset version."""
    previous = last_checkpoint(storage, run_name)
    if previous is None:
        return
    uri = storage.uri(previous.path)
    try:
        done = read_progress_in_place(previous)
    except CheckpointError as exc:
        raise TrainingError(str(exc), checkpoint_uri=uri) from exc
    if done.dataset_version != dataset.version:
        raise TrainingError(
            f"run {run_name} in {config.run.storage_path} was trained on dataset version "
            f"{done.dataset_version}, this call has version {dataset.version}; delete the old run "
            "folder or use another run.storage_path",
            checkpoint_uri=uri,
        )
    logger.info("run %s resumes from its checkpoint %s (epoch %d, step %d)", run_name, uri, done.epoch, done.step)


def train_on_ray(config: ResolvedConfig, dataset: DatasetRef, *, hooks: TrainHooks | None = None) -> TrainResult:
    """Train CycleGAN on Ray Train with ``config.scaling`` workers; resume the run
    ``config.ray_run_name(dataset.version)`` from its latest checkpoint in ``run.storage_path``.

    Raises TrainingError when training fails beyond ``run.max_failures`` worker restarts, ValueError for
    a configuration the cluster cannot run (resources, local storage on a multi-node cluster).
    """
    if not TorchTrainer.__module__.startswith("ray.train.v2."):
        raise RuntimeError("pipelines.train needs Ray Train V2; unset RAY_TRAIN_V2_ENABLED=0")
    hooks = hooks or TrainHooks()
    run, scaling = config.run, config.scaling
    run_name = config.ray_run_name(dataset.version)
    # dataset.root need not exist here: a worker whose node lacks it ingests the dataset itself.
    credentials = aws_credentials()
    storage = resolve_storage(run.storage_path, config.services, credentials=credentials)
    local = connect_ray(config)
    check_cluster(config, local=local)
    check_resumable(storage, run_name, config, dataset)

    with progress_reporter() as progress_callback:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config, "dataset": dataset, "after_step": hooks.after_step},
            scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                         resources_per_worker={"CPU": scaling.cpus_per_worker,
                                                               **({"GPU": 1} if scaling.use_gpu else {})}),
            run_config=RunConfig(
                name=run_name, storage_path=storage.path, storage_filesystem=storage.filesystem,
                checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep),
                failure_config=FailureConfig(max_failures=run.max_failures),
                callbacks=[progress_callback], worker_runtime_env=worker_runtime_env(credentials),
            ),
        )
        logger.info("training run %s: %d worker(s), %s, checkpoints in %s", run_name, scaling.num_workers,
                    "GPU" if scaling.use_gpu else "CPU", run.storage_path)
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            good = last_checkpoint(storage, run_name)
            good_uri = storage.uri(good.path) if good is not None else None
            raise TrainingError(
                f"training run {run_name} failed (run.max_failures={run.max_failures}): {exc}\n"
                f"last good checkpoint: {good_uri or 'none'}; re-run the same config (same "
                "run.storage_path) to resume from it",
                checkpoint_uri=good_uri,
            ) from exc

    if result.checkpoint is None:
        raise TrainingError(f"training run {run_name} finished without reporting a checkpoint")
    checkpoint_uri = storage.uri(result.checkpoint.path)
    generators_dir = config.output_dir / run_name / "generators"
    try:
        progress = export_final(result.checkpoint, generators_dir)
    except CheckpointError as exc:
        raise TrainingError(f"cannot export the final checkpoint of run {run_name}: {exc}",
                            checkpoint_uri=checkpoint_uri) from exc
    logger.info("run %s done: epoch %d, step %d; checkpoint %s; generators in %s", run_name,
                progress.epoch, progress.step, checkpoint_uri, generators_dir)
    return TrainResult(
        run_name=run_name, checkpoint_uri=checkpoint_uri, generators_dir=generators_dir,
        dataset_version=dataset.version, dataset_uri=dataset.uri, fingerprint=config.fingerprint,
        steps=progress.step, epochs=progress.epoch,
        metrics=progress.history[-1] if progress.history else {}, history=progress.history,
    )
