"""Training progress: the one per-epoch metrics schema and its way to the driver.

``epoch_metrics`` builds the flat ``{name: float}`` record of one epoch; the same record is what a
worker reports to Ray Train, what ``progress.json`` keeps in its history and what
``TrainResult.history`` holds. ``progress_reporter`` logs one line per epoch on the driver as the
reports arrive (through a Ray Train callback and a small actor), hands each record to the listeners of
``epoch_listener`` (the Prefect flow's progress artifact) and warns about worker failures.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict
from ray.train import UserCallback

from cyclegan_core.training.fit import EpochEnd

logger = logging.getLogger(__name__)

EpochListener = Callable[[dict[str, float]], None]
CheckpointListener = Callable[[str, dict[str, float]], None]  # (checkpoint path in storage, epoch record)
# The one key of a checkpoint's report to Ray Train that is not part of the epoch record: its score
# (Ray's checkpoint_score_attribute, order "max"; ``monitor.checkpoint_score``).
SCORE_KEY = "checkpoint_score"
_listeners: list[EpochListener] = []


def epoch_metrics(end: EpochEnd, *, step: int, total_epochs: int, loss_means: dict[str, float],
                  checksums: list[float], nodes: int) -> dict[str, float]:
    """One epoch's record. Keys: ``epoch`` (epochs done, fractional for a partial epoch),
    ``total_epochs``, ``step``, ``lr``, ``epoch_seconds``, ``images_per_s`` (all ranks),
    ``partial_epoch`` (1.0 when max_steps cut it short), ``world_size``, ``nodes``, ``loss_<name>``
    (mean over all ranks and steps), ``G_AB_checksum_rank<r>`` and ``weights_in_sync`` (1.0 when every
    rank holds the same G_AB), ``gpu_mem_peak_gb`` (CUDA only)."""
    metrics = {f"loss_{name}": value for name, value in loss_means.items()}
    metrics.update({f"G_AB_checksum_rank{rank}": value for rank, value in enumerate(checksums)})
    metrics.update(
        weights_in_sync=float(max(checksums) == min(checksums)), nodes=float(nodes), epoch=float(end.progress),
        total_epochs=float(total_epochs), step=float(step), lr=end.lr, epoch_seconds=end.seconds,
        images_per_s=end.images_per_s, partial_epoch=float(end.partial), world_size=float(len(checksums)),
    )
    if end.gpu_mem_peak_gb is not None:
        metrics["gpu_mem_peak_gb"] = end.gpu_mem_peak_gb
    return metrics


class RunProgress(BaseModel):
    """What a checkpoint folder's ``progress.json`` holds: the data trained on and the epoch history."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_version: str
    dataset_uri: str
    epoch: int
    step: int
    history: list[dict[str, float]]


def format_epoch_line(metrics: dict[str, float]) -> str:
    """One readable progress line for an epoch's metrics: epoch k/n, step, losses, the ``eval_<name>``
    metrics of an epoch that was evaluated, learning rate, images/s, the epoch's time and the ETA
    (the remaining epochs at this epoch's pace)."""
    losses = " ".join(
        f"{key[len('loss_'):]}={value:.3f}" for key, value in sorted(metrics.items()) if key.startswith("loss_")
    )
    scores = "".join(
        f" {key[len('eval_'):]}={value:.4g}" for key, value in sorted(metrics.items()) if key.startswith("eval_")
    )
    partial = " (stopped at max_steps)" if metrics.get("partial_epoch") else ""
    remaining = max(0.0, metrics["total_epochs"] - metrics["epoch"])
    eta = f" ETA {format_duration(remaining * metrics['epoch_seconds'])}" if remaining and not partial else ""
    return (
        f"epoch {int(metrics['epoch'])}/{int(metrics['total_epochs'])} step {int(metrics['step'])} "
        f"{losses}{scores} lr={metrics['lr']:.2e} {metrics['images_per_s']:.1f} img/s "
        f"({metrics['epoch_seconds']:.1f}s){eta}{partial}"
    )


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_percent(metrics: dict[str, float]) -> float:
    """How far the run is, 0-100, from an epoch's ``epoch`` and ``total_epochs``."""
    return round(100.0 * min(1.0, metrics["epoch"] / max(metrics["total_epochs"], 1.0)), 2)


@contextmanager
def epoch_listener(listener: EpochListener) -> Iterator[None]:
    """Call ``listener(metrics)`` on the driver with rank 0's record of every epoch reported while the
    block runs (in the context that entered ``progress_reporter``). A listener that raises is logged
    and does not stop training."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class ForwardProgress(UserCallback):
    """Runs in Ray Train's controller actor: forwards rank 0's metrics of each report and worker
    failures to ``inbox`` (fire and forget: the controller never waits on it)."""

    def __init__(self, inbox: Any) -> None:
        self.inbox = inbox

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        # Ray's checkpoint manager handles a report first: this checkpoint is committed and the ones
        # its retention dropped are already deleted.
        if metrics:
            record = {key: value for key, value in metrics[0].items() if key != SCORE_KEY}
            self.inbox.push.remote({"kind": "epoch", "metrics": record,
                                    "checkpoint": checkpoint.path if checkpoint is not None else None})

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        ranks = sorted(worker_exceptions)
        first = str(worker_exceptions[ranks[0]]).strip().splitlines() if ranks else []
        self.inbox.push.remote({"kind": "failure", "ranks": ranks, "error": first[-1] if first else ""})


@ray.remote(num_cpus=0)
class ProgressInbox:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def push(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def drain(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items


def log_item(item: dict[str, Any], on_checkpoint: CheckpointListener | None = None) -> None:
    if item["kind"] == "failure":
        logger.warning("worker rank(s) %s failed: %s; Ray Train restarts from the latest checkpoint "
                       "if run.max_failures allows", item["ranks"], item["error"])
        return
    logger.info(format_epoch_line(item["metrics"]) + (" [checkpoint]" if item["checkpoint"] else ""))
    listeners: list[EpochListener] = _listeners.copy()  # the flow thread may remove one meanwhile
    if on_checkpoint is not None and item["checkpoint"]:
        listeners.append(lambda metrics: on_checkpoint(item["checkpoint"], metrics))
    for listener in listeners:
        try:
            listener(item["metrics"])
        except Exception:  # a progress display must never stop training
            logger.warning("epoch listener %r failed", listener, exc_info=True)


@contextmanager
def progress_reporter(on_checkpoint: CheckpointListener | None = None) -> Iterator[UserCallback]:
    """Yields the Ray Train callback to pass to RunConfig; a driver thread logs what it forwards and
    calls ``on_checkpoint(path, metrics)`` for each committed checkpoint (its path on the storage
    filesystem). The thread runs in a copy of the caller's context, so its lines and listeners belong
    to the caller's run (a Prefect task run's logs and artifacts are found through context variables)."""
    inbox = ProgressInbox.remote()
    stop = threading.Event()

    def pump() -> None:
        while True:
            finished = stop.wait(1.0)
            try:
                for item in ray.get(inbox.drain.remote(), timeout=30):
                    log_item(item, on_checkpoint)
            except ray.exceptions.RayError as exc:  # Ray shutting down under us: stop reporting
                logger.debug("progress reporting stopped: %s", exc)
                return
            if finished:
                return

    thread = threading.Thread(target=contextvars.copy_context().run, args=(pump,), name="ray-train-progress",
                              daemon=True)
    thread.start()
    try:
        yield ForwardProgress(inbox)
    finally:
        stop.set()
        thread.join(timeout=60)
        ray.kill(inbox)
