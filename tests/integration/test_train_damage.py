"""Resuming after damage on a real local Ray (`ray_local`, the fixtures of test_train_ray): a checkpoint
replaced by a malicious pickle, a truncated Ray snapshot, and the failure message's first line. The
pure parts (file checks, folder choice, the summary line) are in tests/unit/test_resume.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from pipelines.config import Services
from pipelines.records import DatasetRef
from pipelines.train import TrainHooks, TrainingError, train_on_ray
from pipelines.train.driver import last_good_checkpoint
from pipelines.train.layout import CHECKPOINT_FILE, check_folder
from pipelines.train.resume import find_resume_point
from pipelines.train.storage import resolve_storage
from tests.integration.test_train_ray import STEPS_PER_EPOCH, CrashOnce, ingested, tiny_config  # noqa: F401
from tests.unit.test_resume import plant_malicious_checkpoint


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
