"""Distributed CycleGAN training on Ray Train (V2): ``train_on_ray(config, dataset) -> TrainResult``.

The driver side connects to Ray (a local cluster, or the one ``RAY_ADDRESS`` names), checks that the
checkpoint storage is reachable from every node, runs a ``TorchTrainer`` with
``config.scaling.num_workers`` workers and, when it finishes, exports the generators of the final
checkpoint into ``config.output_dir/<run_name>/generators``.

Each worker runs ``train_loop_per_worker``: plain PyTorch around ``cyclegan_core``. Ray initialises
the process group (gloo on CPU, NCCL on GPU) and ``CycleGAN`` wraps its nets in DDP itself; the
worker only shards the data (``DistributedSampler`` by rank and world size). This file is the only
place that knows about Ray Train; the training step stays in ``cyclegan_core.model``.

Checkpoints and resume. Rank 0 reports a checkpoint every ``run.checkpoint_every_epochs`` epochs and
at the end (a directory holding the ``cyclegan_core`` checkpoint file plus ``progress.json`` with the
epoch history); Ray Train V2 keeps ``run.num_to_keep`` of them under ``<storage_path>/<run_name>``.
A worker starts from ``ray.train.get_checkpoint()`` when there is one. That covers both a worker-group
restart after a failure (``FailureConfig(max_failures)``) and a new run with the same ``run_name`` and
``storage_path`` after the driver died: V2 reloads the run's checkpoint snapshot from storage by itself
(``TorchTrainer.restore`` no longer exists). Resume is exact at epoch boundaries because the data
order and every random draw of epoch ``e`` are a function of ``(seed, e, rank)``.

Storage: a local path (single node only) or ``s3://bucket/prefix`` through ``pyarrow.fs.S3FileSystem``
(endpoint from ``AWS_ENDPOINT_URL``, region ``AWS_DEFAULT_REGION``, credentials from the AWS_* variables
or the node's credential chain).

Testing hook: ``FaultInjection`` makes one worker process die (``os._exit(1)``) at a given global step,
once across restarts (a marker file records that it happened); the fault-tolerance tests use it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pipelines.config import PipelineConfig
from pipelines.records import DatasetRef, TrainResult
from pipelines.s3 import DEFAULT_REGION, parse_s3_uri

if TYPE_CHECKING:
    import pyarrow.fs
    import torch

    from cyclegan_core.model import CycleGAN

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "cyclegan.pt"
PROGRESS_FILE = "progress.json"
# AWS variables forwarded to the workers so that a worker that must ingest the dataset itself (a node
# without the driver's cache) reaches the same S3 endpoint as the driver.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class TrainingError(RuntimeError):
    """Training on Ray failed; ``checkpoint_uri`` is the last good checkpoint (None if there is none)."""

    def __init__(self, message: str, *, checkpoint_uri: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint_uri = checkpoint_uri


@dataclass(frozen=True)
class FaultInjection:
    """Testing hook: the worker of world rank ``rank`` exits with ``os._exit(1)`` after global step
    ``at_step``, unless ``marker`` exists; it creates ``marker`` first, so the fault happens once even
    across worker restarts. ``marker`` must be on storage every node sees (tests run on one node).
    Before dying it waits until Ray Train has committed the checkpoints reported so far."""

    at_step: int
    marker: Path
    rank: int = 1


@dataclass(frozen=True)
class TrainHooks:
    """Optional extras of ``train_on_ray``.

    ``on_epoch`` is called on the driver, from a background thread, with rank 0's metrics of every
    epoch as they arrive (e.g. to log them to MLflow). ``fault`` is the testing hook above.
    """

    on_epoch: Callable[[dict[str, float]], None] | None = None
    fault: FaultInjection | None = None


@dataclass(frozen=True)
class StorageTarget:
    """Where Ray Train keeps a run: the path Ray gets, the filesystem (None = local) and the URI prefix
    that turns a filesystem path back into a user-facing URI ('' for local, 's3://' for S3)."""

    path: str
    filesystem: pyarrow.fs.FileSystem | None
    uri_prefix: str

    @property
    def is_local(self) -> bool:
        return self.filesystem is None

    def uri(self, fs_path: str) -> str:
        return self.uri_prefix + fs_path


# --- pure helpers (driver and worker) -----------------------------------------------------------


def s3_filesystem_from_env(env: dict[str, str] | None = None) -> pyarrow.fs.S3FileSystem:
    """A pyarrow S3 filesystem configured like the pipeline's boto3 clients (``pipelines.s3``)."""
    import pyarrow.fs

    env = dict(os.environ) if env is None else env
    options: dict[str, Any] = {
        "region": env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_REGION,
        "access_key": env.get("AWS_ACCESS_KEY_ID"),
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": env.get("AWS_SESSION_TOKEN"),
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        # pyarrow wants host[:port] and the scheme separately.
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if not (options["access_key"] and options["secret_key"]):
        # Neither given: pyarrow falls back to the node's credential chain (profile, instance role).
        options.pop("access_key"), options.pop("secret_key"), options.pop("session_token")
    return pyarrow.fs.S3FileSystem(**options)


def resolve_storage(storage_path: str, env: dict[str, str] | None = None) -> StorageTarget:
    """Turn ``run.storage_path`` (local path or ``s3://bucket/prefix``) into what RunConfig needs.

    A local path is made absolute (workers run in their own working directory).
    """
    if storage_path.startswith("s3://"):
        bucket, prefix = parse_s3_uri(storage_path)
        path = f"{bucket}/{prefix.rstrip('/')}" if prefix.strip("/") else bucket
        return StorageTarget(path=path, filesystem=s3_filesystem_from_env(env), uri_prefix="s3://")
    if "://" in storage_path:
        raise ValueError(
            f"run.storage_path {storage_path!r} is not supported: use a local path or s3://bucket/prefix"
        )
    return StorageTarget(path=str(Path(storage_path).expanduser().resolve()), filesystem=None, uri_prefix="")


def check_storage_shared(storage_path: str, alive_nodes: int) -> None:
    """Refuse a local ``storage_path`` on a multi-node cluster: workers on other nodes could not write
    checkpoints where the driver (and a resumed run) reads them."""
    if alive_nodes > 1 and not storage_path.startswith("s3://"):
        raise ValueError(
            f"run.storage_path {storage_path} is local but the Ray cluster has {alive_nodes} nodes; "
            "use s3://bucket/prefix shared storage so every node writes checkpoints to the same place"
        )


def should_checkpoint(epoch: int, *, every: int, total: int, stopped_early: bool) -> bool:
    """Checkpoint every ``every`` finished epochs, at the last epoch, and when ``max_steps`` stopped."""
    return stopped_early or epoch >= total or epoch % every == 0


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of all random draws of one worker in one epoch (image pool, augmentation workers)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31 - 1)


def format_epoch_line(metrics: dict[str, Any]) -> str:
    """One readable progress line for an epoch's metrics."""
    losses = " ".join(
        f"{key[len('loss_'):]}={value:.3f}" for key, value in sorted(metrics.items()) if key.startswith("loss_")
    )
    partial = " (stopped at max_steps)" if metrics.get("partial_epoch") else ""
    return (
        f"epoch {int(metrics['epoch'])}/{int(metrics['total_epochs'])} step {int(metrics['step'])} "
        f"{losses} lr={metrics['lr']:.2e} {metrics['images_per_s']:.1f} img/s "
        f"({metrics['epoch_seconds']:.1f}s){partial}"
    )


def read_progress(directory: Path) -> dict[str, Any]:
    """The ``progress.json`` of a checkpoint directory (history, epoch, step, dataset version)."""
    path = directory / PROGRESS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"checkpoint progress file {path} is missing or unreadable: {exc}") from exc


# --- worker side --------------------------------------------------------------------------------


def worker_dataset_root(dataset: DatasetRef, config: PipelineConfig, *, local_rank: int) -> Path:
    """The dataset folder on this worker's node: the driver's cache when this node has it, else the
    node ingests ``dataset.uri`` into the same cache_dir (local rank 0 only; the others wait)."""
    import torch.distributed as dist

    if not dataset.root.is_dir() and local_rank == 0:
        from pipelines.ingest import ingest_prefix

        logger.info("dataset %s is not cached on this node; ingesting %s", dataset.root, dataset.uri)
        ingested = ingest_prefix(dataset.uri, config.cache_dir, load_size=config.data.load_size).dataset
        if ingested.version != dataset.version:
            raise TrainingError(
                f"dataset {dataset.uri} changed during the run: the driver trained on version "
                f"{dataset.version}, this node ingested version {ingested.version}; re-run the pipeline"
            )
        if ingested.root.resolve() != dataset.root.resolve():
            raise TrainingError(
                f"dataset {dataset.uri} was ingested into {ingested.root} on this node, expected "
                f"{dataset.root}; use the same cache_dir on every node"
            )
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the node's other workers wait for local rank 0's ingest
    if not dataset.root.is_dir():
        raise TrainingError(f"dataset folder {dataset.root} does not exist on this node after ingest")
    return dataset.root


def parameter_checksum(module: torch.nn.Module) -> float:
    """Sum of |w| over all parameters in float64: equal on every rank iff DDP kept them in sync."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum().item() for p in module.parameters()))


def all_reduce_mean(values: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Mean over all ranks of per-rank sums ``values`` of ``count`` steps each."""
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    if not keys:
        return {}
    sums = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    total = count
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        total *= dist.get_world_size()
    return {k: float(v) / max(total, 1) for k, v in zip(keys, sums.tolist())}


def all_gather_float(value: float, device: torch.device) -> list[float]:
    """``value`` of every rank, in rank order."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    local = torch.tensor([value], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]


def count_nodes() -> int:
    """How many Ray nodes the workers run on (by Ray node ID: nodes that share an IP count apart)."""
    import ray
    import torch.distributed as dist

    node_id = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, node_id)
    return len(set(gathered))


def rank_pools_file(rank: int) -> str:
    return f"rank{rank}_pools.pt"


def write_checkpoint_files(directory: Path, model: CycleGAN, dataset: DatasetRef,
                           history: list[dict[str, float]], *, rank: int) -> None:
    """One rank's part of a checkpoint: rank 0 writes the full training state and ``progress.json``;
    every other rank only its image pools (the one per-rank state an exact resume needs: the global
    RNG is reseeded from (seed, epoch, rank) every epoch)."""
    import torch

    from cyclegan_core.checkpoint import save_checkpoint
    from pipelines.ingest import write_json_atomic

    if rank == 0:
        save_checkpoint(model, directory / CHECKPOINT_FILE,
                        extra={"dataset_version": dataset.version, "epoch": model.epoch})
        write_json_atomic(directory / PROGRESS_FILE, {
            "dataset_version": dataset.version, "dataset_uri": dataset.uri,
            "epoch": model.epoch, "step": model.step, "history": history,
        })
    else:
        pools = {"fake_A": model.fake_A_pool.state_dict(), "fake_B": model.fake_B_pool.state_dict()}
        torch.save(pools, directory / rank_pools_file(rank))


def restore_from(model: CycleGAN, checkpoint: Any, *, rank: int) -> list[dict[str, float]]:
    """Load a reported Ray checkpoint into ``model`` (and this rank's pools when the checkpoint has
    them: a run resumed with more workers starts those ranks' pools from rank 0's); returns the epoch
    history it carries. (The driver has already checked that its dataset version matches.)"""
    import torch

    from cyclegan_core.checkpoint import load_checkpoint

    with checkpoint.as_directory() as directory:
        progress = read_progress(Path(directory))
        load_checkpoint(model, Path(directory) / CHECKPOINT_FILE)
        pools_path = Path(directory) / rank_pools_file(rank)
        if rank and pools_path.is_file():
            pools = torch.load(pools_path, map_location="cpu", weights_only=True)
            model.fake_A_pool.load_state_dict(pools["fake_A"])
            model.fake_B_pool.load_state_dict(pools["fake_B"])
    return list(progress.get("history", []))


def maybe_inject_fault(loop_config: dict[str, Any], *, step: int, rank: int) -> None:
    """The testing hook (see FaultInjection): die hard, like an OOM-killed or preempted worker."""
    at_step = loop_config.get("fail_at_step")
    if at_step is None or step != at_step or rank != loop_config.get("fail_rank", 1):
        return
    marker = Path(loop_config["fail_marker"])
    if marker.exists():
        return
    import ray.train

    # Ray Train commits a reported checkpoint asynchronously (the controller registers it a moment
    # later); wait for that, so the crash deterministically lands after the last checkpoint is durable.
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED,
                                           timeout_s=300)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"rank {rank} exited at step {step}\n")
    logger.warning("fault injection: rank %d exits at step %d", rank, step)
    os._exit(1)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The per-worker training function Ray Train runs (``loop_config`` from ``build_loop_config``)."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from cyclegan_core.data import UnpairedDataset, build_dataloader
    from cyclegan_core.epoch import train_epoch
    from cyclegan_core.model import CycleGAN, seed_everything

    config = PipelineConfig.model_validate(loop_config["config"])
    dataset = DatasetRef.model_validate(loop_config["dataset"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    seed = config.train.seed

    root = worker_dataset_root(dataset, config, local_rank=context.get_local_rank())
    # CycleGAN seeds with train.seed before building the nets: identical initial weights on every rank.
    model = CycleGAN(config.model, config.train, device=device)
    nodes = count_nodes()  # fixed for this worker group (a restart runs this function again)
    history: list[dict[str, float]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        history = restore_from(model, checkpoint, rank=rank)
        logger.info("rank %d resumed from %s at epoch %d, step %d", rank, checkpoint.path, model.epoch,
                    model.step)

    # Items are a function of (seed, epoch, index), the shard of (seed, epoch, rank): one common seed.
    train_set = UnpairedDataset(root, config.data, phase="train", seed=seed)
    loader = build_dataloader(train_set, batch_size=config.train.batch_size, shuffle=True,
                              num_workers=config.data.num_workers, rank=rank, world_size=world_size, seed=seed)
    total_epochs = config.train.total_epochs
    max_steps = config.run.max_steps
    stopped = max_steps is not None and model.step >= max_steps

    while model.epoch < total_epochs and not stopped:
        epoch = model.epoch
        seed_everything(epoch_seed(seed, epoch, rank))
        loader.sampler.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = train_epoch(model, loader, max_steps=max_steps,
                            after_step=lambda step: maybe_inject_fault(loop_config, step=step, rank=rank))
        stopped, steps = stats.stopped, stats.steps
        partial = stopped and steps < len(loader)
        lr = model.learning_rate()
        if not partial:
            model.end_epoch()

        metrics: dict[str, float] = {
            f"loss_{k}": v for k, v in all_reduce_mean(stats.loss_sums, steps, device).items()
        }
        checksums = all_gather_float(parameter_checksum(model.G_AB), device)
        metrics.update({f"G_AB_checksum_rank{r}": c for r, c in enumerate(checksums)})
        metrics["weights_in_sync"] = float(max(checksums) == min(checksums))
        metrics["nodes"] = float(nodes)
        metrics.update(
            epoch=model.epoch if not partial else epoch + steps / max(len(loader), 1),
            total_epochs=total_epochs, step=model.step, lr=lr, epoch_seconds=stats.seconds,
            images_per_s=stats.images_per_s(config.train.batch_size, world_size),
            partial_epoch=float(partial), world_size=world_size,
        )
        if device.type == "cuda":
            metrics["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        history.append(metrics)

        if should_checkpoint(model.epoch, every=config.run.checkpoint_every_epochs, total=total_epochs,
                             stopped_early=stopped):
            with tempfile.TemporaryDirectory() as tmp:
                write_checkpoint_files(Path(tmp), model, dataset, history, rank=rank)
                # Every rank reports (V2 synchronises on it); Ray merges the ranks' files into one folder.
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_epoch{model.epoch:04d}_step{model.step:08d}")
        else:
            ray.train.report(metrics)


# --- driver side --------------------------------------------------------------------------------


def build_loop_config(config: PipelineConfig, dataset: DatasetRef, fault: FaultInjection | None) -> dict[str, Any]:
    """What every worker receives: JSON-able config and dataset (absolute paths) plus the testing hook."""
    loop_config: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "dataset": dataset.model_dump(mode="json"),
    }
    if fault is not None:
        loop_config.update(fail_at_step=fault.at_step, fail_marker=str(fault.marker.resolve()),
                           fail_rank=fault.rank)
    return loop_config


def with_absolute_paths(config: PipelineConfig, dataset: DatasetRef) -> tuple[PipelineConfig, DatasetRef]:
    """Ray workers run in their own working directory: resolve relative paths on the driver."""
    config = config.model_copy(update={"cache_dir": config.cache_dir.resolve(),
                                       "output_dir": config.output_dir.resolve()})
    dataset = dataset.model_copy(update={"root": dataset.root.resolve(), "manifest": dataset.manifest.resolve()})
    return config, dataset


def connect_ray(config: PipelineConfig) -> bool:
    """Connect to RAY_ADDRESS's cluster, or start a local one; returns True when the cluster is local.

    An already initialised Ray (a test fixture, a notebook) is used as it is.
    """
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return not address
    # Ray's raw worker output is dropped unless debugging: progress is reported by this module, and
    # worker errors reach the driver as exceptions.
    quiet = not logger.isEnabledFor(logging.DEBUG)
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING)
        return False
    logger.info("starting a local Ray (%s CPUs)", config.scaling.local_num_cpus or "all")
    ray.init(num_cpus=config.scaling.local_num_cpus, include_dashboard=False, log_to_driver=not quiet,
             logging_level=logging.WARNING)
    return True


def check_cluster(config: PipelineConfig, *, local: bool) -> None:
    """Fail fast (instead of waiting forever for resources) on what the cluster cannot run."""
    import ray

    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_storage_shared(config.run.storage_path, alive)
    if not local:
        return  # an autoscaling cluster may add nodes; Ray Train waits for them
    resources = ray.cluster_resources()
    scaling = config.scaling
    need_cpu = scaling.num_workers * scaling.cpus_per_worker
    if resources.get("CPU", 0) < need_cpu:
        raise ValueError(
            f"scaling asks for {scaling.num_workers} workers x {scaling.cpus_per_worker} CPU = {need_cpu} CPUs "
            f"but the local Ray has {resources.get('CPU', 0):g}; lower scaling.num_workers or "
            "scaling.cpus_per_worker, or raise scaling.local_num_cpus"
        )
    if scaling.use_gpu and resources.get("GPU", 0) < scaling.num_workers:
        raise ValueError(
            f"scaling.use_gpu with {scaling.num_workers} workers needs {scaling.num_workers} GPUs "
            f"but the local Ray has {resources.get('GPU', 0):g}"
        )


def make_progress_callback(inbox: Any) -> Any:
    """A Ray Train UserCallback (it runs in the controller actor) that forwards rank 0's metrics of each
    report and worker failures to ``inbox`` (fire and forget: the controller never waits on it)."""
    from ray.train import UserCallback

    class ForwardProgress(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics:
                inbox.push.remote({"kind": "epoch", "metrics": metrics[0],
                                   "checkpoint": checkpoint.path if checkpoint else None})

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            ranks = sorted(worker_exceptions)
            first = str(worker_exceptions[ranks[0]]).strip().splitlines() if ranks else []
            inbox.push.remote({"kind": "failure", "ranks": ranks, "error": first[-1] if first else ""})

    return ForwardProgress()


@contextmanager
def progress_reporter(on_epoch: Callable[[dict[str, float]], None] | None) -> Iterator[Any]:
    """Yields a Ray Train callback; a driver thread logs one line per epoch (and calls ``on_epoch``)."""
    import ray

    @ray.remote(num_cpus=0)
    class ProgressInbox:
        def __init__(self) -> None:
            self.items: list[dict[str, Any]] = []

        def push(self, item: dict[str, Any]) -> None:
            self.items.append(item)

        def drain(self) -> list[dict[str, Any]]:
            items, self.items = self.items, []
            return items

    inbox = ProgressInbox.remote()
    stop = threading.Event()

    def handle(item: dict[str, Any]) -> None:
        if item["kind"] == "failure":
            logger.warning("worker rank(s) %s failed: %s; Ray Train restarts from the latest checkpoint "
                           "if run.max_failures allows", item["ranks"], item["error"])
            return
        metrics = item["metrics"]
        logger.info(format_epoch_line(metrics) + (" [checkpoint]" if item["checkpoint"] else ""))
        if on_epoch is not None:
            try:
                on_epoch(metrics)
            except Exception:  # a failing observer must not kill the training run
                logger.exception("on_epoch hook failed")

    def pump() -> None:
        while True:
            finished = stop.wait(1.0)
            try:
                for item in ray.get(inbox.drain.remote(), timeout=30):
                    handle(item)
            except ray.exceptions.RayError as exc:  # Ray shutting down under us: stop reporting
                logger.debug("progress reporting stopped: %s", exc)
                return
            if finished:
                return

    thread = threading.Thread(target=pump, name="ray-train-progress", daemon=True)
    thread.start()
    try:
        yield make_progress_callback(inbox)
    finally:
        stop.set()
        thread.join(timeout=60)
        ray.kill(inbox)


def worker_runtime_env() -> dict[str, Any] | None:
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    return {"env_vars": env_vars} if env_vars else None


def last_checkpoint(storage: StorageTarget, run_name: str) -> Any:
    """The latest checkpoint Ray Train recorded for a run (None when the run has none)."""
    from ray.train import Result

    try:
        return Result.from_path(f"{storage.path}/{run_name}", storage_filesystem=storage.filesystem).checkpoint
    except RuntimeError:  # no run folder or no checkpoint snapshot in it yet
        return None


def checkpoint_progress(checkpoint: Any) -> dict[str, Any]:
    """``progress.json`` of a reported checkpoint, read in place (no download of the weights)."""
    path = f"{checkpoint.path}/{PROGRESS_FILE}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read().decode())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"checkpoint progress file {path} is missing or unreadable: {exc}") from exc


def export_final(checkpoint: Any, config: PipelineConfig, dest: Path) -> dict[str, Any]:
    """Download the final checkpoint, export its generators into ``dest`` (export_generators replaces
    it atomically) and return the checkpoint's progress record."""
    from cyclegan_core.checkpoint import load_checkpoint
    from cyclegan_core.export import export_generators
    from cyclegan_core.model import CycleGAN

    with tempfile.TemporaryDirectory(prefix="cyclegan-final-") as tmp:
        local = Path(tmp) / "checkpoint"
        checkpoint.to_directory(str(local))
        progress = read_progress(local)
        model = CycleGAN(config.model, config.train, device="cpu")
        load_checkpoint(model, local / CHECKPOINT_FILE)
        export_generators(model, dest)
    return progress


def train_on_ray(config: PipelineConfig, dataset: DatasetRef, *, hooks: TrainHooks | None = None) -> TrainResult:
    """Train CycleGAN on Ray Train with ``config.scaling`` workers; resume ``config.run.run_name`` from
    its latest checkpoint in ``config.run.storage_path`` when it has one.

    Raises TrainingError when training fails beyond ``run.max_failures`` worker restarts, ValueError for
    a configuration the cluster cannot run (resources, local storage on a multi-node cluster).
    """
    # Ray 2.x before V2-by-default reads this at import time; V2's semantics (resume, errors) are assumed.
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import is_v2_enabled

    if not is_v2_enabled():
        raise RuntimeError("pipelines.train needs Ray Train V2; unset RAY_TRAIN_V2_ENABLED=0")
    hooks = hooks or TrainHooks()
    # dataset.root need not exist here: a worker whose node lacks it ingests dataset.uri itself.
    config, dataset = with_absolute_paths(config, dataset)
    storage = resolve_storage(config.run.storage_path)
    local = connect_ray(config)
    check_cluster(config, local=local)

    run = config.run
    previous = last_checkpoint(storage, run.run_name)
    if previous is not None:
        done = checkpoint_progress(previous)
        if done.get("dataset_version") != dataset.version:
            raise TrainingError(
                f"run {run.run_name} in {run.storage_path} was trained on dataset version "
                f"{done.get('dataset_version')}, this call has version {dataset.version}; choose a new "
                "run.run_name (or delete the old run) to train on the new data",
                checkpoint_uri=storage.uri(previous.path),
            )
        logger.info("run %s resumes from its checkpoint %s (epoch %s, step %s)", run.run_name,
                    storage.uri(previous.path), done.get("epoch"), done.get("step"))
    scaling = config.scaling
    with progress_reporter(hooks.on_epoch) as progress_callback:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=build_loop_config(config, dataset, hooks.fault),
            scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                         resources_per_worker={"CPU": scaling.cpus_per_worker,
                                                               **({"GPU": 1} if scaling.use_gpu else {})}),
            run_config=RunConfig(
                name=run.run_name, storage_path=storage.path, storage_filesystem=storage.filesystem,
                checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep),
                failure_config=FailureConfig(max_failures=run.max_failures),
                callbacks=[progress_callback], worker_runtime_env=worker_runtime_env(),
            ),
        )
        logger.info("training run %s: %d worker(s), %s, checkpoints in %s", run.run_name, scaling.num_workers,
                    "GPU" if scaling.use_gpu else "CPU", config.run.storage_path)
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            good = last_checkpoint(storage, run.run_name)
            good_uri = storage.uri(good.path) if good is not None else None
            raise TrainingError(
                f"training run {run.run_name} failed (run.max_failures={run.max_failures}): {exc}\n"
                f"last good checkpoint: {good_uri or 'none'}; re-run with the same run.run_name and "
                "run.storage_path to resume from it",
                checkpoint_uri=good_uri,
            ) from exc

    if result.checkpoint is None:
        raise TrainingError(f"training run {run.run_name} finished without reporting a checkpoint")
    checkpoint_uri = storage.uri(result.checkpoint.path)
    generators_dir = config.output_dir / run.run_name / "generators"
    progress = export_final(result.checkpoint, config, generators_dir)
    history = [{k: float(v) for k, v in epoch.items()} for epoch in progress.get("history", [])]
    logger.info("run %s done: epoch %d, step %d; checkpoint %s; generators in %s", run.run_name,
                progress["epoch"], progress["step"], checkpoint_uri, generators_dir)
    return TrainResult(
        run_name=run.run_name, checkpoint_uri=checkpoint_uri, generators_dir=generators_dir,
        dataset_version=dataset.version, dataset_uri=dataset.uri, config_hash=config.config_hash(),
        steps=int(progress["step"]), epochs=int(progress["epoch"]),
        metrics=history[-1] if history else {}, history=history,
    )
