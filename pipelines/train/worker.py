"""The function every Ray Train worker runs: plain PyTorch around ``cyclegan_core.fit``.

Ray initialises the process group (gloo on CPU, NCCL on GPU) and ``CycleGAN`` wraps its nets in DDP
itself; the worker shards the data by rank, resumes from ``ray.train.get_checkpoint()`` when there is
one (a worker-group restart, or a new run with the same name and storage) and reports each epoch's
metrics, with a checkpoint folder every ``run.checkpoint_every_epochs`` epochs and at the end, uploaded
off the training path (``upload``). Between the epochs ``monitor.EpochJudge`` evaluates (each checkpoint
carries its score and the evaluation's sample grids) and rolls a faulty epoch back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train.torch import get_device

from cyclegan_core.atomic import scratch_folder
from cyclegan_core.backends import training_precision
from cyclegan_core.data import UnpairedDataset, build_dataloader
from cyclegan_core.distributed import all_gather_float, all_reduce_mean, barrier, parameter_checksum
from cyclegan_core.fit import EpochEnd, fit
from cyclegan_core.model import CycleGAN
from cyclegan_core.precision import ResolvedPrecision
from pipelines.config import ResolvedConfig
from pipelines.ingest import ingest_dataset
from pipelines.records import DatasetRef
from pipelines.tracking.run import node_system_metrics
from pipelines.train.cluster import count_nodes, require_node_credentials
from pipelines.train.layout import read_in_checkpoint, restore_from_folder, write_checkpoint_folder
from pipelines.train.monitor import EpochJudge, WatchdogError, checkpoint_score
from pipelines.train.progress import SCORE_KEY, RunProgress, epoch_metrics
from pipelines.train.upload import CheckpointUploads

logger = logging.getLogger(__name__)

AfterStep = Callable[[int, int], None]  # (global step, world rank), on every worker
AfterStepModel = Callable[[CycleGAN, int, int], None]  # (the model, global step, world rank)


def should_checkpoint(epoch: int, *, every: int, total: int, stopped_early: bool) -> bool:
    """Checkpoint every ``every`` finished epochs, at the last epoch, and when ``max_steps`` stopped."""
    return stopped_early or epoch >= total or epoch % every == 0


def worker_dataset_root(dataset: DatasetRef, config: ResolvedConfig, *, local_rank: int) -> Path:
    """The dataset folder on this worker's node: the driver's cache when this node has it, else local
    rank 0 ingests ``config.dataset_uri`` into the same cache_dir while the node's other workers wait."""
    if not dataset.root.is_dir() and local_rank == 0:
        logger.info("dataset %s is not cached on this node; ingesting %s", dataset.root, dataset.uri)
        ingested = ingest_dataset(config).dataset
        if ingested.version != dataset.version:
            raise RuntimeError(
                f"dataset {dataset.uri} changed during the run: the driver trained on version "
                f"{dataset.version}, this node ingested version {ingested.version}; re-run the pipeline"
            )
        if ingested.root.resolve() != dataset.root.resolve():
            raise RuntimeError(
                f"dataset {dataset.uri} was ingested into {ingested.root} on this node, expected "
                f"{dataset.root}; use the same cache_dir on every node"
            )
    barrier()
    if not dataset.root.is_dir():
        raise RuntimeError(f"dataset folder {dataset.root} does not exist on this node after ingest")
    return dataset.root


def cpu_precision(config: ResolvedConfig, device: torch.device, rank: int) -> ResolvedPrecision:
    """What ``train.precision: auto`` runs on this worker's CPU: measured on this node once (the node's other
    workers wait for it, then read it), fp32 when the precision is not auto or the device is a GPU."""
    if device.type != "cpu" or config.train.precision != "auto":
        return "fp32"
    precision, reason = training_precision(config.model, crop_size=config.data.crop_size,
                                           batch_size=config.train.batch_size, cache_dir=config.services.cache_dir)
    if rank == 0:
        logger.info("train.precision auto on this CPU: %s (%s)", precision, reason)
    return precision


def step_hook(model: CycleGAN, rank: int, after_step: AfterStep | None,
              after_step_model: AfterStepModel | None) -> Callable[[int], None] | None:
    """``fit``'s after_step: the test hooks of ``TrainHooks`` with this worker's model and rank."""
    if after_step is None and after_step_model is None:
        return None

    def hook(step: int) -> None:
        if after_step is not None:
            after_step(step, rank)
        if after_step_model is not None:
            after_step_model(model, step, rank)
    return hook


def train_loop_per_worker(loop_config: dict[str, Any]) -> str | None:
    """``loop_config``: ``config`` (ResolvedConfig), ``dataset`` (DatasetRef), ``after_step`` and
    ``after_step_model`` (test hooks or None),
    ``resume_from`` (a Checkpoint to resume from when Ray Train hands none, or None), ``tracking`` (the
    pipeline's MLflow run for the sample grids, or None). Returns None, or the watchdog's message when
    it stopped the run (rank 0's is ``Result.return_value``)."""
    config: ResolvedConfig = loop_config["config"]
    dataset: DatasetRef = loop_config["dataset"]
    after_step: AfterStep | None = loop_config["after_step"]
    after_step_model: AfterStepModel | None = loop_config.get("after_step_model")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    seed, total_epochs = config.train.seed, config.train.total_epochs

    require_node_credentials(config, ingests=not dataset.root.is_dir(), process=f"Ray Train worker rank {rank}")
    root = worker_dataset_root(dataset, config, local_rank=context.get_local_rank())
    # CycleGAN seeds with train.seed before building the nets: identical initial weights on every rank.
    model = CycleGAN(config.model, config.train, device=device, cpu_auto=cpu_precision(config, device, rank))
    nodes = count_nodes()  # fixed for this worker group (a restart runs this function again)
    history: list[dict[str, float]] = []
    # Ray's latest checkpoint of this run, else the one the driver chose when Ray's was damaged.
    checkpoint = ray.train.get_checkpoint() or loop_config["resume_from"]
    if checkpoint is not None:
        history = list(read_in_checkpoint(
            checkpoint, lambda directory: restore_from_folder(model, directory, rank=rank)).history)
        logger.info("rank %d resumed from %s at epoch %d, step %d", rank, checkpoint.path, model.epoch, model.step)

    # Items are a function of (seed, epoch, index), the shard of (seed, epoch, rank): one common seed.
    train_set = UnpairedDataset(root, config.data, phase="train", seed=seed)
    loader = build_dataloader(train_set, batch_size=config.train.batch_size, shuffle=True,
                              num_workers=config.data.num_workers, rank=rank, world_size=world_size, seed=seed)
    judge = EpochJudge(model, config, root, rank, history, tracking=loop_config.get("tracking"))
    uploads = CheckpointUploads(config.run.checkpoint_upload, rank=rank)

    def report(end: EpochEnd) -> None:
        metrics = epoch_metrics(end, step=model.step, total_epochs=total_epochs, nodes=nodes,
                                loss_means=all_reduce_mean(end.loss_sums, end.steps, device),
                                checksums=all_gather_float(parameter_checksum(model.G_AB), device))
        checkpointed = should_checkpoint(model.epoch, every=config.run.checkpoint_every_epochs, total=total_epochs,
                                         stopped_early=end.stopped)
        if not judge.judge(metrics, epoch=model.epoch, checkpoint=checkpointed):
            return  # rolled back: fit goes on from the healthy epoch
        judge.healthy(metrics)
        if not checkpointed:
            ray.train.report(metrics)
            return
        progress = RunProgress(dataset_version=dataset.version, dataset_uri=dataset.uri, epoch=model.epoch,
                               step=model.step, history=history)
        uploads.wait_for_previous()
        # <tmp>/cyclegan-checkpoints/: a killed worker's folder is swept by the next checkpoint on the node;
        # the upload releases it (``upload``), so it outlives this call when the upload is asynchronous.
        scratch = ExitStack()
        try:
            tmp = scratch.enter_context(scratch_folder("checkpoints", name=f"rank{rank}"))
            write_checkpoint_folder(tmp, model, progress, rank=rank, samples=judge.samples)
        except BaseException:
            scratch.close()
            raise
        # Every rank reports (V2 synchronises on it); Ray merges the ranks' files into one folder.
        score = checkpoint_score(metrics, primary_key=judge.primary_key,
                                 higher_is_better=config.registry.higher_is_better)
        uploads.report({**metrics, SCORE_KEY: score}, tmp, scratch,
                       dir_name=f"checkpoint_epoch{model.epoch:04d}_step{model.step:08d}")

    # one monitor per node (its first worker): CPU, memory and GPU charts of every training node
    tracking = loop_config.get("tracking") if context.get_local_rank() == 0 else None
    try:
        with node_system_metrics(tracking, f"node-{context.get_node_rank()}"):
            fit(model, loader, total_epochs=total_epochs, seed=seed, rank=rank, max_steps=config.run.max_steps,
                after_step=step_hook(model, rank, after_step, after_step_model),
                on_epoch_end=report)
    except WatchdogError as exc:  # every rank decides alike (reduced losses, rank 0's shared scores)
        if rank == 0:
            logger.error("watchdog: %s", exc)
        # returned, not raised: Ray Train would restart the workers (run.max_failures) into the same fault
        return str(exc)
    return None
