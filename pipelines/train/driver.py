"""``train_on_ray(config, dataset) -> TrainResult``: run the training of one pipeline run on Ray Train.

The driver connects to Ray, checks the cluster and the checkpoint storage, runs a ``TorchTrainer``
of ``config.scaling.num_workers`` workers (``worker.train_loop_per_worker``) under the run name
``config.ray_run_name(dataset.version)`` and exports the generators of the best checkpoint by the
primary metric evaluated during training (the last one when nothing was evaluated) into
``config.output_dir/<run name>/generators``. Ray Train V2 resumes a run with the same name and storage
from its latest checkpoint by itself: after a worker failure (``run.max_failures``) and when a
retried call starts the same run again. Before it starts, ``check_resumable`` makes sure that
checkpoint loads and otherwise resumes from the newest one that does (``resume``). A run whose latest
checkpoint ends it (a later call for the same run) is exported from Ray's record without workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ray.train import (
    Checkpoint,
    CheckpointConfig,
    ControllerError,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
    WorkerGroupError,
)
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

from cyclegan_core.atomic import scratch_folder
from cyclegan_core.inference.translator import Translator
from cyclegan_core.training.checkpoint import CheckpointError
from cyclegan_core.training.fit import FitCallback, training_done
from pipelines.config import ResolvedConfig
from pipelines.records import DatasetRef, TrainResult
from pipelines.tracking.run import TrackingRun
from pipelines.train.checkpoint_models import CheckpointModels
from pipelines.train.cluster import check_cluster, connect_ray
from pipelines.train.layout import CHECKPOINT_FILE, read_in_checkpoint, read_progress
from pipelines.train.monitor import NO_SCORE
from pipelines.train.progress import SCORE_KEY, CheckpointListener, RunProgress, progress_reporter
from pipelines.train.resume import (
    ResumePoint,
    find_resume_point,
    run_folder,
    set_snapshot_aside,
    snapshot_exists,
)
from pipelines.train.storage import StorageTarget, resolve_storage
from pipelines.train.worker import WorkerArgs, train_loop_per_worker

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training on Ray failed; ``checkpoint_uri`` is the last good checkpoint (None if there is none)."""

    def __init__(self, message: str, *, checkpoint_uri: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint_uri = checkpoint_uri


def export_final(checkpoint: Checkpoint, dest: Path) -> RunProgress:
    """Export the generators of ``checkpoint`` into ``dest`` (rebuilt from the checkpoint's own model
    config; replaced atomically) and return the checkpoint's progress."""
    with scratch_folder("final", name="checkpoint") as tmp:  # a killed driver's is swept by the next export
        local = tmp / "checkpoint"
        checkpoint.to_directory(str(local))
        progress = read_progress(local)
        Translator.from_checkpoint(local / CHECKPOINT_FILE).save_pretrained(dest)
    return progress


def best_checkpoint(result: Result) -> tuple[Checkpoint, dict] | None:
    """The kept checkpoint of the run with the highest ``checkpoint_score`` (the latest among equals:
    with nothing evaluated it is the last one), with its reported metrics; None when none is kept."""
    kept = result.best_checkpoints or []
    return max(kept, key=lambda item: (item[1].get(SCORE_KEY, NO_SCORE), item[1].get("step", 0.0)), default=None)


def check_resumable(storage: StorageTarget, run_name: str, config: ResolvedConfig,
                    dataset: DatasetRef) -> tuple[Checkpoint | None, ResumePoint]:
    """Find the checkpoint the run resumes from (the newest that loads), refuse a run folder trained on
    another dataset version or one whose checkpoints all fail to load. Returns the checkpoint the
    workers must be handed when it is not the one Ray Train hands them (Ray's snapshot then set
    aside), else None; and the resume point found."""
    point = find_resume_point(storage, run_name)
    if point.snapshot_problem:
        logger.warning("run %s: %s; using the checkpoint folders instead", run_name, point.snapshot_problem)
    for damaged in point.damaged:
        logger.warning("run %s: skipping checkpoint %s, it does not load: %s", run_name, damaged.uri, damaged.reason)
    if point.checkpoint is None or point.progress is None:
        if point.damaged:
            folder = storage.uri(f"{storage.path}/{run_name}")
            raise TrainingError(
                f"run {run_name} cannot resume: none of its {len(point.damaged)} checkpoint(s) in {folder} "
                f"loads (newest: {point.damaged[0].reason}); restore a good checkpoint folder there, or delete "
                "the run folder to train from scratch")
        return None, point
    uri = storage.uri(point.checkpoint.path)
    done = point.progress
    if done.dataset_version != dataset.version:
        raise TrainingError(
            f"run {run_name} in {config.run.storage_path} was trained on dataset version "
            f"{done.dataset_version}, this call has version {dataset.version}; delete the old run "
            "folder or use another run.storage_path",
            checkpoint_uri=uri,
        )
    if point.damaged:
        logger.warning("run %s falls back to its previous checkpoint that loads: %s (epoch %d, step %d)",
                       run_name, uri, done.epoch, done.step)
    else:
        logger.info("run %s resumes from its checkpoint %s (epoch %d, step %d)", run_name, uri, done.epoch,
                    done.step)
    if point.ray_latest:
        return None, point
    if snapshot_exists(storage, run_name):
        logger.warning("run %s: Ray's checkpoint snapshot set aside as %s (it would resume from the "
                       "damaged checkpoint or not start)", run_name, set_snapshot_aside(storage, run_name))
    return point.checkpoint, point


def finished_result(storage: StorageTarget, run_name: str, point: ResumePoint, config: ResolvedConfig) -> Result | None:
    """The Result Ray Train's snapshot records for a run whose latest checkpoint ends it (a later call:
    the export or the flow's cache was lost), None otherwise. Such a run needs no workers: they would
    load the checkpoint and stop at once."""
    if not point.ray_latest or point.progress is None or not training_done(
            point.progress.epoch, point.progress.step, total_epochs=config.train.total_epochs,
            max_steps=config.run.max_steps):
        return None
    return Result.from_path(run_folder(storage, run_name), storage_filesystem=storage.filesystem)


def one_line(text: str, *, limit: int = 300) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def worker_error(error: BaseException) -> str:
    """``Type: first line`` of an exception; Ray Train wraps a worker's exception with its traceback as
    text (UserExceptionWithTraceback): the exception it holds is the one named."""
    base = getattr(error, "_base_exc", None)
    error = base if isinstance(base, BaseException) else error
    return one_line(f"{type(error).__name__}: {error}")


def failure_summary(exc: TrainingFailedError) -> str:
    """What failed, in one line: the worker ranks that died, else the first rank's exception (Ray's own
    message embeds every rank's traceback and worker metadata)."""
    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        failures = exc.worker_failures
        died = sorted(rank for rank, error in failures.items() if isinstance(error, WorkerHealthCheckFailedError))
        if died:  # the others' errors (a collective that lost its peer) follow from it
            return (f"worker rank(s) {died} died (the process exited: killed, out of memory or crashed; "
                    "see its Ray worker log)")
        first, *others = sorted(failures)
        also = f" (rank(s) {others} failed too)" if others else ""
        return f"worker rank {first} raised {worker_error(failures[first])}{also}"
    if isinstance(exc, ControllerError):
        return f"Ray Train's controller failed: {worker_error(exc.controller_failure)}"
    return worker_error(exc)


def last_good_checkpoint(storage: StorageTarget, run_name: str) -> str | None:
    """URI of the newest checkpoint of the run that loads (None when there is none)."""
    try:
        good = find_resume_point(storage, run_name).checkpoint
    except OSError as exc:  # the storage is unreachable: the failure message still goes out
        logger.warning("cannot look for the last good checkpoint of run %s: %s", run_name, exc)
        return None
    return storage.uri(good.path) if good is not None else None


def train_on_ray(config: ResolvedConfig, dataset: DatasetRef, *, callbacks: Sequence[FitCallback] = (),
                 tracking: TrackingRun | None = None) -> TrainResult:
    """Train CycleGAN on Ray Train with ``config.scaling`` workers; resume the run
    ``config.ray_run_name(dataset.version)`` from its latest checkpoint in ``run.storage_path``.

    Raises TrainingError when training fails beyond ``run.max_failures`` worker restarts, ValueError for
    a configuration the cluster cannot run (resources, local storage on a multi-node cluster).
    ``tracking`` (the pipeline's open MLflow run, None for none) reaches the workers in their
    ``WorkerArgs`` (rank 0 logs its sample images there), and each evaluated checkpoint becomes a
    LoggedModel of it (``checkpoint_models``), logged by the driver as Ray commits it. ``callbacks`` run
    in every worker's ``fit`` (shipped there by Ray's pickling), e.g. a test's fault injection.
    """
    if not TorchTrainer.__module__.startswith("ray.train.v2."):
        raise RuntimeError("pipelines.train needs Ray Train V2; unset RAY_TRAIN_V2_ENABLED=0")
    run_name = config.ray_run_name(dataset.version)
    # dataset.root need not exist here: a worker whose node lacks it ingests the dataset itself.
    storage = resolve_storage(config.run.storage_path, config.services)
    local = connect_ray(config)
    check_cluster(config, local=local)
    resume_from, point = check_resumable(storage, run_name, config, dataset)
    result = finished_result(storage, run_name, point, config)
    if result is None:
        models = CheckpointModels(tracking, storage, run_name, config, dataset) if tracking is not None else None
        try:
            args = WorkerArgs(config, dataset, resume_from=resume_from, tracking=tracking, callbacks=tuple(callbacks))
            result = fit_on_ray(args, storage, run_name, on_checkpoint=models.submit if models else None)
        finally:
            if models is not None:
                models.finish()
    else:
        logger.info("run %s has finished training (epoch %d, step %d): exporting its generators without "
                    "starting workers", run_name, point.progress.epoch, point.progress.step)
    # No report at all: the checkpoint resumed from was already the run's last (Ray's own record of
    # it was set aside).
    final = result.checkpoint or resume_from
    if final is None:
        raise TrainingError(f"training run {run_name} finished without reporting a checkpoint")
    return export_result(config, dataset, storage, run_name, result, final)


def fit_on_ray(args: WorkerArgs, storage: StorageTarget, run_name: str, *,
               on_checkpoint: CheckpointListener | None = None) -> Result:
    """Run the ``TorchTrainer``; raise TrainingError when it fails or the watchdog stopped it.
    ``on_checkpoint(path, metrics)`` runs on the driver for each committed checkpoint."""
    run, scaling = args.config.run, args.config.scaling
    with progress_reporter(on_checkpoint) as progress_callback:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=args.loop_config(),
            scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                         resources_per_worker={"CPU": scaling.cpus_per_worker,
                                                               **({"GPU": 1} if scaling.use_gpu else {})}),
            run_config=RunConfig(
                name=run_name, storage_path=storage.path, storage_filesystem=storage.filesystem,
                # the best num_to_keep by score; Ray Train also keeps the latest (what a resume uses)
                checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep, checkpoint_score_attribute=SCORE_KEY,
                                                   checkpoint_score_order="max"),
                failure_config=FailureConfig(max_failures=run.max_failures),
                callbacks=[progress_callback],
            ),
        )
        logger.info("training run %s: %d worker(s), %s, checkpoints in %s", run_name, scaling.num_workers,
                    "GPU" if scaling.use_gpu else "CPU", run.storage_path)
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            good_uri = last_good_checkpoint(storage, run_name)
            resume = (f"last good checkpoint {good_uri}; re-run the same config (same run.storage_path) to "
                      "resume from it") if good_uri else "no checkpoint to resume from"
            raise TrainingError(
                f"training run {run_name} failed (run.max_failures={run.max_failures}): {failure_summary(exc)}; "
                f"{resume}\n\nRay Train's report:\n{exc}",
                checkpoint_uri=good_uri,
            ) from exc

    failure = result.return_value  # the watchdog's message when it stopped the run
    if failure:
        good_uri = last_good_checkpoint(storage, run_name)
        raise TrainingError(f"training run {run_name} stopped by the watchdog: {failure}"
                            + (f"; last good checkpoint {good_uri}" if good_uri else ""), checkpoint_uri=good_uri)
    return result


def export_result(config: ResolvedConfig, dataset: DatasetRef, storage: StorageTarget, run_name: str,
                  result: Result, final: Checkpoint) -> TrainResult:
    """Export the best checkpoint's generators (``final``'s when nothing was scored) and describe the run."""
    best = best_checkpoint(result)
    scored = best is not None and best[1].get(SCORE_KEY, NO_SCORE) > NO_SCORE
    exported = best[0] if best is not None and scored else final
    checkpoint_uri = storage.uri(final.path)
    generators_dir = config.output_dir / run_name / "generators"
    try:
        progress = read_in_checkpoint(final, read_progress)
        exported_progress = export_final(exported, generators_dir)
    except CheckpointError as exc:
        raise TrainingError(f"cannot export the checkpoint {storage.uri(exported.path)} of run {run_name}: {exc}",
                            checkpoint_uri=checkpoint_uri) from exc
    best_epoch = exported_progress.epoch if scored else None
    logger.info("run %s done: epoch %d, step %d; checkpoint %s; generators of %s in %s", run_name,
                progress.epoch, progress.step, checkpoint_uri,
                f"the best epoch {best_epoch} by eval_{config.registry.primary_metric}" if scored else "the last epoch",
                generators_dir)
    return TrainResult(
        run_name=run_name, checkpoint_uri=checkpoint_uri, generators_dir=generators_dir,
        exported_checkpoint_uri=storage.uri(exported.path),
        dataset_version=dataset.version, dataset_uri=dataset.uri, fingerprint=config.fingerprint,
        steps=progress.step, epochs=progress.epoch,
        metrics=progress.history[-1] if progress.history else {}, history=progress.history, best_epoch=best_epoch,
    )
