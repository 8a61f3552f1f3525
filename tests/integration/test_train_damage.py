"""Resuming after damage: checkpoint files that do not load, a truncated Ray snapshot, and the one-line
failure message, on a real local Ray (`ray_local`) with the fixtures of test_train_ray."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import (
    CheckpointManagerInitializationError,
    UserExceptionWithTraceback,
    WorkerHealthCheckFailedError,
)

from cyclegan_core.checkpoint import CheckpointError
from cyclegan_core.model import CycleGAN
from pipelines.config import Services
from pipelines.records import DatasetRef
from pipelines.train import TrainHooks, TrainingError, train_on_ray
from pipelines.train.driver import failure_summary, last_good_checkpoint
from pipelines.train.layout import CHECKPOINT_FILE, check_folder, write_checkpoint_folder
from pipelines.train.progress import RunProgress
from pipelines.train.resume import find_resume_point
from pipelines.train.storage import resolve_storage
from tests.integration.test_train_ray import STEPS_PER_EPOCH, CrashOnce, ingested, tiny_config  # noqa: F401


class RunsACommand:
    """Unpickled without weights_only, this runs a shell command (it creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format": "cyclegan_core.checkpoint", "version": 1, "state": RunsACommand(marker)}, path)


# --- fast: the pure parts ------------------------------------------------------------------------


def test_check_folder_names_the_first_file_that_does_not_load(tmp_path: Path) -> None:
    config = tiny_config(DatasetRef(uri="s3://b/p", root=tmp_path, manifest=tmp_path / "m.json", version="v"),
                         tmp_path, run_name="check", storage_path=str(tmp_path / "runs"), epochs=1)
    folder = tmp_path / "ckpt"
    progress = RunProgress(dataset_version="v", dataset_uri="s3://b/p", epoch=1, step=12,
                           history=[{"epoch": 1.0, "step": 12.0, "world_size": 2.0}])
    for rank in (0, 1):
        write_checkpoint_folder(folder, CycleGAN(config.model, config.train), progress, rank=rank)
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


# --- slow: real Ray fits -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_damaged_checkpoint_and_a_truncated_snapshot_fall_back_to_the_previous_checkpoint(
    ray_local: None, ingested: DatasetRef, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    config = tiny_config(ingested, tmp_path, run_name="damage", storage_path=str(tmp_path / "runs"), epochs=3,
                         max_failures=0)
    run_name = config.ray_run_name(ingested.version)
    folder = tmp_path / "runs" / run_name
    first, second = (folder / f"checkpoint_epoch{e:04d}_step{e * STEPS_PER_EPOCH:08d}" for e in (1, 2))

    # 1. A worker dies in epoch 3: the message leads with one line (what, last good checkpoint, what to do).
    with pytest.raises(TrainingError) as failed:
        train_on_ray(config, ingested, hooks=TrainHooks(
            after_step=CrashOnce(at_step=2 * STEPS_PER_EPOCH + 2, marker=tmp_path / "crash")))
    headline, *rest = str(failed.value).splitlines()
    assert re.fullmatch(rf"training run {run_name} failed \(run\.max_failures=0\): worker rank\(s\) \[1\] died "
                        rf"\(.*\); last good checkpoint {second}; re-run the same config \(same run\.storage_path\) "
                        "to resume from it", headline), headline
    assert "Ray Train's report:" in rest and failed.value.checkpoint_uri == str(second)

    # 2. Damage: the latest checkpoint becomes a malicious pickle, then Ray's snapshot is cut in half.
    storage = resolve_storage(str(tmp_path / "runs"), Services())
    plant_malicious_checkpoint(second / CHECKPOINT_FILE, tmp_path / "pwned")
    assert last_good_checkpoint(storage, run_name) == str(first)  # what a failure message would name
    snapshot = folder / "checkpoint_manager_snapshot.json"
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])

    # 3. The same config again: it skips the damaged checkpoint (named first), resumes from epoch 1, ends.
    caplog.set_level(logging.INFO, logger="pipelines.train")
    result = train_on_ray(config, ingested)

    messages = [r.getMessage() for r in caplog.records if r.name == "pipelines.train.driver"]
    assert any(f"Ray's snapshot {snapshot} is unreadable" in m for m in messages), messages
    assert any(m.startswith(f"run {run_name}: skipping checkpoint {second}, it does not load: checkpoint "
                            f"{second / CHECKPOINT_FILE} holds objects that weights_only loading refuses")
               for m in messages), messages
    assert any(f"falls back to its previous checkpoint that loads: {first} (epoch 1" in m for m in messages)
    assert not (tmp_path / "pwned").exists()
    assert (result.epochs, result.steps) == (3, 3 * STEPS_PER_EPOCH)
    assert [int(h["epoch"]) for h in result.history] == [1, 2, 3]
    assert len(list(folder.glob("checkpoint_manager_snapshot.json.set-aside-*"))) == 1
    # Ray wrote a new snapshot; its latest checkpoint loads and Ray hands it out by itself.
    point = find_resume_point(storage, run_name)
    assert point.ray_latest and point.checkpoint.path == result.checkpoint_uri and not point.damaged
    assert check_folder(second).epoch == 2  # epoch 2 trained again over the damaged folder
