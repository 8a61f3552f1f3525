"""The function every Ray Train worker runs: plain PyTorch around ``cyclegan_core.training.fit``.

``train_loop_per_worker(loop_config)`` gets a ``WorkerArgs`` record, shards the data by rank, resumes
from ``ray.train.get_checkpoint()`` when there is one (a worker-group restart, or a new run with the
same name and storage) and runs ``fit`` with an ``EpochReport``: what a worker does at each epoch's end
(the record, the judge's evaluation and rollback, ``ray.train.report`` with a checkpoint folder when one
is due). Ray initialises the process group and ``CycleGAN`` wraps its nets in DDP itself.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint
from ray.train.torch import get_device

from cyclegan_core.atomic import scratch_folder
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.inference.backends import training_precision
from cyclegan_core.precision import ResolvedPrecision
from cyclegan_core.training.distributed import all_gather_float, all_reduce_mean, barrier, parameter_checksum
from cyclegan_core.training.fit import EpochEnd, FitCallback, fit
from cyclegan_core.training.model import CycleGAN
from pipelines.config import ResolvedConfig
from pipelines.ingest import ingest_dataset
from pipelines.records import DatasetRef
from pipelines.tracking.run import TrackingRun, node_system_metrics
from pipelines.train.cluster import count_nodes, require_node_credentials
from pipelines.train.layout import read_in_checkpoint, restore_from_folder, write_checkpoint_folder
from pipelines.train.monitor import EpochJudge, WatchdogError, checkpoint_score
from pipelines.train.progress import SCORE_KEY, RunProgress, epoch_metrics
from pipelines.train.upload import CheckpointUploads

logger = logging.getLogger(__name__)

ARGS_KEY = "args"  # the one key of train_loop_config


@dataclass(frozen=True)
class WorkerArgs:
    """What the driver hands every worker, pickled by Ray (``train_loop_config``, see ``loop_config``)."""

    config: ResolvedConfig
    dataset: DatasetRef
    resume_from: Checkpoint | None = None  # when Ray Train hands none: the driver's pick past a damaged one
    tracking: TrackingRun | None = None  # the pipeline's MLflow run (sample grids, node charts)
    callbacks: tuple[FitCallback, ...] = ()  # more work in fit's loop, before the epoch report

    def loop_config(self) -> dict[str, WorkerArgs]:
        """Ray Train's ``train_loop_config``: a dict (Ray records it in its run state)."""
        return {ARGS_KEY: self}


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


def resume(model: CycleGAN, resume_from: Checkpoint | None, *, rank: int) -> list[dict[str, float]]:
    """Load Ray's latest checkpoint of this run, else ``resume_from``, into ``model``; returns the
    checkpoint's epoch history (empty when there is nothing to resume from)."""
    checkpoint = ray.train.get_checkpoint() or resume_from
    if checkpoint is None:
        return []
    progress = read_in_checkpoint(checkpoint, lambda folder: restore_from_folder(model, folder, rank=rank))
    logger.info("rank %d resumed from %s at epoch %d, step %d", rank, checkpoint.path, model.epoch,
                model.step)
    return list(progress.history)


class EpochReport(FitCallback):
    """A worker's epoch end: the epoch record (reduced over the ranks), the judge's verdict (a faulty
    epoch is rolled back and not reported), then ``ray.train.report``, with this rank's part of a
    checkpoint folder every ``run.checkpoint_every_epochs`` epochs, at the end and at ``max_steps``."""

    def __init__(self, args: WorkerArgs, judge: EpochJudge, *, rank: int, nodes: int) -> None:
        self.config, self.dataset, self.judge = args.config, args.dataset, judge
        self.rank, self.nodes = rank, nodes  # nodes: fixed for this worker group (a restart rebuilds it)
        self.uploads = CheckpointUploads(args.config.run.checkpoint_upload, rank=rank)

    def on_epoch_end(self, model: CycleGAN, end: EpochEnd) -> None:
        run, total = self.config.run, self.config.train.total_epochs
        metrics = epoch_metrics(end, step=model.step, total_epochs=total, nodes=self.nodes,
                                loss_means=all_reduce_mean(end.loss_sums, end.steps, model.device),
                                checksums=all_gather_float(parameter_checksum(model.G_AB), model.device))
        due = should_checkpoint(model.epoch, every=run.checkpoint_every_epochs, total=total,
                                stopped_early=end.stopped)
        if not self.judge.judge(metrics, epoch=model.epoch, checkpoint=due):
            return  # rolled back: fit goes on from the healthy epoch
        self.judge.healthy(metrics)
        if due:
            self.report_checkpoint(model, metrics)
        else:
            ray.train.report(metrics)

    def report_checkpoint(self, model: CycleGAN, metrics: dict[str, float]) -> None:
        """Every rank reports (V2 synchronises on it); Ray merges the ranks' files into one folder."""
        progress = RunProgress(dataset_version=self.dataset.version, dataset_uri=self.dataset.uri,
                               epoch=model.epoch, step=model.step, history=self.judge.history)
        self.uploads.wait_for_previous()
        # <tmp>/cyclegan-checkpoints/: a killed worker's folder is swept by the next checkpoint on the node;
        # the upload releases it (``upload``), so it outlives this call when the upload is asynchronous.
        scratch = ExitStack()
        try:
            folder = scratch.enter_context(scratch_folder("checkpoints", name=f"rank{self.rank}"))
            write_checkpoint_folder(folder, model, progress, rank=self.rank, samples=self.judge.samples)
        except BaseException:
            scratch.close()
            raise
        score = checkpoint_score(metrics, primary_key=self.judge.primary_key,
                                 higher_is_better=self.config.registry.higher_is_better)
        self.uploads.report({**metrics, SCORE_KEY: score}, folder, scratch,
                            dir_name=f"checkpoint_epoch{model.epoch:04d}_step{model.step:08d}")


def train_loop_per_worker(loop_config: dict[str, WorkerArgs]) -> str | None:
    """One worker of the run: ``loop_config[ARGS_KEY]`` is its ``WorkerArgs``. Returns None, or the
    watchdog's message when it stopped the run (rank 0's is ``Result.return_value``)."""
    args = loop_config[ARGS_KEY]
    config, dataset, seed = args.config, args.dataset, args.config.train.seed
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    require_node_credentials(config, ingests=not dataset.root.is_dir(), process=f"Ray Train worker rank {rank}")
    root = worker_dataset_root(dataset, config, local_rank=context.get_local_rank())

    # CycleGAN seeds with train.seed before building the nets: identical initial weights on every rank.
    model = CycleGAN(config.model, config.train, device=device, cpu_auto=cpu_precision(config, device, rank))
    nodes = count_nodes()
    history = resume(model, args.resume_from, rank=rank)
    # Items are a function of (seed, epoch, index), the shard of (seed, epoch, rank): one common seed.
    train_set = UnpairedDataset(root, config.data, phase="train", seed=seed)
    loader = build_dataloader(train_set, batch_size=config.train.batch_size, shuffle=True,
                              num_workers=config.data.num_workers, rank=rank, world_size=world_size, seed=seed)
    judge = EpochJudge(model, config, root, rank, history, tracking=args.tracking)
    report = EpochReport(args, judge, rank=rank, nodes=nodes)

    # one monitor per node (its first worker): CPU, memory and GPU charts of every training node
    node_tracking = args.tracking if context.get_local_rank() == 0 else None
    try:
        with node_system_metrics(node_tracking, f"node-{context.get_node_rank()}"):
            fit(model, loader, total_epochs=config.train.total_epochs, seed=seed, rank=rank,
                max_steps=config.run.max_steps, callbacks=[*args.callbacks, report])
    except WatchdogError as exc:  # every rank decides alike (reduced losses, rank 0's shared scores)
        if rank == 0:
            logger.error("watchdog: %s", exc)
        # returned, not raised: Ray Train would restart the workers (run.max_failures) into the same fault
        return str(exc)
    return None
