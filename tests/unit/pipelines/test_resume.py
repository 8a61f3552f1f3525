"""Which checkpoint a run resumes from, and the one-line failure summary: pure parts on local folders
(the real Ray runs are in tests/integration/test_train_damage.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import (
    CheckpointManagerInitializationError,
    UserExceptionWithTraceback,
    WorkerHealthCheckFailedError,
)

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.training.checkpoint import CheckpointError
from cyclegan_core.training.model import CycleGAN
from pipelines.config import Services
from pipelines.train.driver import failure_summary
from pipelines.train.layout import CHECKPOINT_FILE, check_folder, write_checkpoint_folder
from pipelines.train.progress import RunProgress
from pipelines.train.resume import find_resume_point
from pipelines.train.storage import resolve_storage

TINY = ModelConfig(generator="resnet_6blocks", ngf=4, ndf=4)


class RunsACommand:
    """Unpickled without weights_only, this runs a shell command (it creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format": "cyclegan_core.checkpoint", "version": 1, "state": RunsACommand(marker)}, path)


def write_folder(folder: Path, epoch: int, *, world_size: int = 2) -> RunProgress:
    progress = RunProgress(dataset_version="v", dataset_uri="s3://b/p", epoch=epoch, step=12 * epoch,
                           history=[{"epoch": float(e), "step": 12.0 * e, "world_size": float(world_size)}
                                    for e in range(1, epoch + 1)])
    for rank in range(world_size):
        write_checkpoint_folder(folder, CycleGAN(TINY, TrainConfig()), progress, rank=rank)
    return progress


def test_check_folder_names_the_first_file_that_does_not_load(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    progress = write_folder(folder, 1)
    assert check_folder(folder) == progress
    pools = folder / "rank1_pools.pt"
    pools.write_bytes(pools.read_bytes()[:64])
    with pytest.raises(CheckpointError, match=rf"^checkpoint pools file {pools} is corrupt or truncated"):
        check_folder(folder)
    pools.unlink()  # a rank's upload that never landed: the run had 2 ranks
    with pytest.raises(CheckpointError, match=rf"^checkpoint pools file {pools} does not exist"):
        check_folder(folder)
    plant_malicious_checkpoint(folder / CHECKPOINT_FILE, tmp_path / "pwned")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {folder / CHECKPOINT_FILE} holds objects that "
                                              "weights_only loading refuses"):
        check_folder(folder)
    assert not (tmp_path / "pwned").exists()


def test_without_a_snapshot_the_newest_folder_that_loads_is_chosen(tmp_path: Path) -> None:
    storage = resolve_storage(str(tmp_path / "runs"), Services())
    assert find_resume_point(storage, "run").checkpoint is None  # no run folder: from scratch
    run = tmp_path / "runs" / "run"
    folders = [run / f"checkpoint_epoch{e:04d}_step{12 * e:08d}" for e in (1, 2)]
    for epoch, folder in enumerate(folders, start=1):
        folder.mkdir(parents=True)
        write_folder(folder, epoch)
    (run / "checkpoint_epoch0003_partial").mkdir()  # not a name the worker writes: ignored
    point = find_resume_point(storage, "run")
    assert point.checkpoint.path == str(folders[1]) and point.progress.epoch == 2
    assert not point.ray_latest and not point.damaged and point.snapshot_problem is None

    (folders[1] / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut")
    (run / "checkpoint_manager_snapshot.json").write_text('{"ray_version": "2.60.0", "checkpoint_res')
    point = find_resume_point(storage, "run")
    assert point.checkpoint.path == str(folders[0]) and not point.ray_latest
    assert [d.uri for d in point.damaged] == [str(folders[1])]
    assert point.damaged[0].reason.startswith(f"checkpoint {folders[1] / CHECKPOINT_FILE} is corrupt")
    assert point.snapshot_problem.startswith(f"Ray's snapshot {run / 'checkpoint_manager_snapshot.json'} "
                                             "is unreadable")

    (folders[0] / "progress.json").write_text("{")
    point = find_resume_point(storage, "run")
    assert point.checkpoint is None and len(point.damaged) == 2


def test_failure_summary_is_one_line_naming_what_failed() -> None:
    died = WorkerGroupError("(Ray's long text)", {
        0: RuntimeError("[gloo/pair.cc:545] Read error: Connection reset by peer.\nGLHF"),
        1: WorkerHealthCheckFailedError("A worker health check failed.\nWorker info: ...", RuntimeError("gone")),
    })
    assert failure_summary(died).startswith("worker rank(s) [1] died (the process exited")
    error = CheckpointError("checkpoint /runs/r/checkpoint_epoch0002_step00000024/cyclegan.pt is corrupt")
    wrapped = {rank: UserExceptionWithTraceback(error, f"Traceback (most recent call last):\n  ...\n{error}")
               for rank in (0, 1)}
    assert failure_summary(WorkerGroupError("...", wrapped)) == (
        f"worker rank 0 raised CheckpointError: {error} (rank(s) [1] failed too)")
    controller = ControllerError(CheckpointManagerInitializationError("Expecting value: line 1 column 1"))
    assert failure_summary(controller) == (
        "Ray Train's controller failed: CheckpointManagerInitializationError: Expecting value: line 1 column 1")
    for exc in (died, WorkerGroupError("...", wrapped), controller):
        assert "\n" not in failure_summary(exc)
