"""Which checkpoint a run resumes from: the newest of its checkpoints whose files load.

Ray Train V2 resumes a run from the latest checkpoint its ``checkpoint_manager_snapshot.json`` (in the
run folder) records and hands it to ``ray.train.get_checkpoint()`` unread; it does not start at all
(CheckpointManagerInitializationError) when that file is truncated, which a crash can do since Ray
writes it in place. ``find_resume_point`` reads the run's checkpoints as a resume would, newest first:
those the snapshot records or, when the snapshot is missing or unreadable, the checkpoint folders.
When the checkpoint to resume from is not the one Ray would hand out, ``set_snapshot_aside`` renames the
snapshot (Ray then starts with no record of the run) and the workers get the checkpoint through their
loop config: V2's replacement of ``resume_from_checkpoint``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pyarrow.fs
from ray.train import Checkpoint, Result
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

from cyclegan_core.training.checkpoint import CheckpointError
from pipelines.train.layout import check_folder, read_in_checkpoint
from pipelines.train.progress import RunProgress
from pipelines.train.storage import StorageTarget

# The worker names its checkpoints checkpoint_epoch<4 digits>_step<8 digits>: sorted by name = by progress.
CHECKPOINT_FOLDER = re.compile(r"checkpoint_epoch\d{4}_step\d{8}")


@dataclass(frozen=True)
class Damaged:
    """A checkpoint that does not load: its URI and the first file that fails, with why."""

    uri: str
    reason: str


@dataclass(frozen=True)
class RunCheckpoints:
    """A run's checkpoints, oldest first; ``from_snapshot``: Ray's snapshot listed them (else they are
    the run folder's checkpoint folders); ``snapshot_problem``: why the snapshot could not be read."""

    checkpoints: list[Checkpoint]
    from_snapshot: bool
    snapshot_problem: str | None = None


@dataclass(frozen=True)
class ResumePoint:
    """Where a run resumes: ``checkpoint`` (None: from scratch, or nothing loads when ``damaged``),
    its ``progress``, whether it is the checkpoint Ray hands the workers by itself (``ray_latest``),
    the newer checkpoints skipped because they do not load, and the snapshot's problem if any."""

    checkpoint: Checkpoint | None
    progress: RunProgress | None
    ray_latest: bool
    damaged: tuple[Damaged, ...]
    snapshot_problem: str | None


def filesystem(storage: StorageTarget) -> pyarrow.fs.FileSystem:
    return storage.filesystem or pyarrow.fs.LocalFileSystem()


def run_folder(storage: StorageTarget, run_name: str) -> str:
    return f"{storage.path}/{run_name}"


def snapshot_path(storage: StorageTarget, run_name: str) -> str:
    return f"{run_folder(storage, run_name)}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}"


def snapshot_exists(storage: StorageTarget, run_name: str) -> bool:
    return filesystem(storage).get_file_info(snapshot_path(storage, run_name)).type == pyarrow.fs.FileType.File


def folder_checkpoints(storage: StorageTarget, run_name: str) -> list[Checkpoint]:
    """The run folder's checkpoint folders, oldest first."""
    fs = filesystem(storage)
    selector = pyarrow.fs.FileSelector(run_folder(storage, run_name), allow_not_found=True)
    folders = sorted(info.path for info in fs.get_file_info(selector)
                     if info.type == pyarrow.fs.FileType.Directory and CHECKPOINT_FOLDER.fullmatch(info.base_name))
    return [Checkpoint(path, filesystem=fs) for path in folders]


def run_checkpoints(storage: StorageTarget, run_name: str) -> RunCheckpoints:
    """The checkpoints Ray's snapshot records; the checkpoint folders when it is missing or unreadable."""
    if not snapshot_exists(storage, run_name):
        return RunCheckpoints(folder_checkpoints(storage, run_name), from_snapshot=False)
    try:
        result = Result.from_path(run_folder(storage, run_name), storage_filesystem=storage.filesystem)
    except (CheckpointManagerInitializationError, RuntimeError, ValueError) as exc:
        problem = " ".join(str(exc).split())[:300]
        return RunCheckpoints(folder_checkpoints(storage, run_name), from_snapshot=False,
                              snapshot_problem=f"Ray's snapshot {storage.uri(snapshot_path(storage, run_name))} "
                                               f"is unreadable ({problem})")
    recorded = [checkpoint for checkpoint, _ in result.best_checkpoints]
    if result.checkpoint is not None and all(c.path != result.checkpoint.path for c in recorded):
        recorded.append(result.checkpoint)
    return RunCheckpoints(sorted(recorded, key=lambda c: c.path.rsplit("/", 1)[-1]), from_snapshot=True)


def find_resume_point(storage: StorageTarget, run_name: str) -> ResumePoint:
    """The newest checkpoint of the run whose files all load (``layout.check_folder``).

    Only a CheckpointError (a file missing, corrupt, refused by ``weights_only``) makes a checkpoint
    damaged; a storage error while downloading one propagates (it says nothing about the files).
    """
    found = run_checkpoints(storage, run_name)
    damaged: list[Damaged] = []
    for checkpoint in reversed(found.checkpoints):
        try:
            progress = read_in_checkpoint(checkpoint, check_folder)
        except CheckpointError as exc:
            damaged.append(Damaged(storage.uri(checkpoint.path), str(exc)))
            continue
        return ResumePoint(checkpoint, progress, ray_latest=found.from_snapshot and not damaged,
                           damaged=tuple(damaged), snapshot_problem=found.snapshot_problem)
    return ResumePoint(None, None, ray_latest=False, damaged=tuple(damaged), snapshot_problem=found.snapshot_problem)


def set_snapshot_aside(storage: StorageTarget, run_name: str) -> str:
    """Rename Ray's snapshot to ``<name>.set-aside-<UTC time>`` (kept for inspection); returns its URI."""
    source = snapshot_path(storage, run_name)
    target = f"{source}.set-aside-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    filesystem(storage).move(source, target)
    return storage.uri(target)
