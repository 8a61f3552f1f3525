"""Resuming after damage on a real local Ray (`ray_local`, the fixtures of test_train_ray): a checkpoint
replaced by a malicious pickle, a truncated Ray snapshot, a half-uploaded checkpoint folder (a worker
killed during its upload: test_crash_leftovers kills one on S3), and the failure message's first line; the
resumed run still ends with the weights of an uninterrupted run, bit for bit. The pure parts (file
checks, folder choice, the summary line) are in tests/unit/pipelines/test_resume.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import boto3
import pytest
import torch

from cyclegan_core.inference.translator import Translator
from pipelines.config import Services
from pipelines.records import DatasetRef
from pipelines.train import TrainingError, train_on_ray
from pipelines.train.driver import last_good_checkpoint
from pipelines.train.layout import CHECKPOINT_FILE, check_folder
from pipelines.train.resume import find_resume_point, set_snapshot_aside
from pipelines.train.storage import resolve_storage
from tests.integration.test_train_ray import STEPS_PER_EPOCH, CrashOnce, ingested, tiny_config  # noqa: F401
from tests.unit.pipelines.test_resume import plant_malicious_checkpoint, write_folder


@pytest.mark.slow
def test_a_damaged_checkpoint_and_a_truncated_snapshot_fall_back_to_the_previous_checkpoint(
    ray_local: None, ingested: DatasetRef, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Also the foundation's exact-resume guarantee across Ray: the run that dies in epoch 3 and resumes
    (from epoch 1, past the damage) ends with the generators of one uninterrupted run, bit for bit."""
    straight = train_on_ray(tiny_config(ingested, tmp_path, run_name="damage", storage_path=str(tmp_path / "straight"),
                                        epochs=3), ingested)
    config = tiny_config(ingested, tmp_path, run_name="damage", storage_path=str(tmp_path / "runs"), epochs=3,
                         max_failures=0)
    run_name = config.ray_run_name(ingested.version)
    folder = tmp_path / "runs" / run_name
    first, second = (folder / f"checkpoint_epoch{e:04d}_step{e * STEPS_PER_EPOCH:08d}" for e in (1, 2))

    # 1. A worker dies in epoch 3: the message leads with one line (what, last good checkpoint, what to do).
    with pytest.raises(TrainingError) as failed:
        train_on_ray(config, ingested,
                     callbacks=[CrashOnce(at_step=2 * STEPS_PER_EPOCH + 2, marker=tmp_path / "crash")])
    headline, *rest = str(failed.value).splitlines()
    assert re.fullmatch(rf"training run {run_name} failed \(run\.max_failures=0\): worker rank\(s\) \[1\] died "
                        rf"\(.*\); last good checkpoint {second}; re-run the same config \(same run\.storage_path\) "
                        "to resume from it", headline), headline
    assert "Ray Train's report:" in rest and failed.value.checkpoint_uri == str(second)

    # 2. Damage: the latest checkpoint becomes a malicious pickle, then Ray's snapshot is cut in half,
    #    and the epoch-3 checkpoint lies half-uploaded (what a worker killed during its asynchronous
    #    upload leaves on a filesystem: a folder Ray never recorded, its state file cut short).
    storage = resolve_storage(str(tmp_path / "runs"), Services())
    plant_malicious_checkpoint(second / CHECKPOINT_FILE, tmp_path / "pwned")
    assert last_good_checkpoint(storage, run_name) == str(first)  # what a failure message would name
    snapshot = folder / "checkpoint_manager_snapshot.json"
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])
    partial = folder / f"checkpoint_epoch0003_step{3 * STEPS_PER_EPOCH:08d}"
    partial.mkdir()
    state = (first / CHECKPOINT_FILE).read_bytes()
    (partial / CHECKPOINT_FILE).write_bytes(state[: len(state) // 3])

    # 3. The same config again: it skips the damaged checkpoint (named first), resumes from epoch 1, ends.
    caplog.set_level(logging.INFO, logger="pipelines.train")
    result = train_on_ray(config, ingested)

    messages = [r.getMessage() for r in caplog.records if r.name == "pipelines.train.driver"]
    assert any(f"Ray's snapshot {snapshot} is unreadable" in m for m in messages), messages
    assert any(m.startswith(f"run {run_name}: skipping checkpoint {partial}, it does not load: checkpoint progress "
                            f"file {partial / 'progress.json'} is missing") for m in messages), messages
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
    assert check_folder(partial).epoch == 3  # and epoch 3 over the half-uploaded one

    # Crashed, damaged and resumed, it ends where the uninterrupted run ended: same losses, same weights.
    assert (straight.epochs, straight.steps) == (result.epochs, result.steps)
    for before, after in zip(straight.history, result.history, strict=True):  # epoch 1 from the crashed run
        assert {k: v for k, v in after.items() if k.startswith(("loss_", "G_AB_checksum"))} == {
            k: v for k, v in before.items() if k.startswith(("loss_", "G_AB_checksum"))}
    expected, got = (Translator.from_pretrained(r.generators_dir, device="cpu") for r in (straight, result))
    for direction in ("AtoB", "BtoA"):
        want, have = expected.generator(direction).state_dict(), got.generator(direction).state_dict()
        assert all(torch.equal(have[key], want[key]) for key in want), f"{direction} differs"


def test_on_s3_damaged_checkpoints_are_named_by_uri_and_the_snapshot_is_set_aside(
    s3_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The same choice on the moto S3 server (no Ray fit): checkpoints are downloaded to be read."""
    s3 = boto3.client("s3")
    for epoch in (1, 2):
        local = tmp_path / f"checkpoint_epoch{epoch:04d}_step{12 * epoch:08d}"
        local.mkdir()
        write_folder(local, epoch)
        if epoch == 2:
            plant_malicious_checkpoint(local / CHECKPOINT_FILE, tmp_path / "pwned")
        for file in local.iterdir():
            s3.upload_file(str(file), s3_bucket, f"runs/run/{local.name}/{file.name}")
    s3.put_object(Bucket=s3_bucket, Key="runs/run/checkpoint_manager_snapshot.json", Body=b'{"ray_version": "2.')
    storage = resolve_storage(f"s3://{s3_bucket}/runs", Services(s3_endpoint_url=s3_server))

    point = find_resume_point(storage, "run")

    prefix = f"s3://{s3_bucket}/runs/run"
    assert (
        point.checkpoint is not None
        and storage.uri(point.checkpoint.path) == f"{prefix}/checkpoint_epoch0001_step00000012"
    )
    assert point.progress.epoch == 1 and not point.ray_latest and not (tmp_path / "pwned").exists()
    (damaged,) = point.damaged
    assert damaged.uri == f"{prefix}/checkpoint_epoch0002_step00000024"
    assert damaged.reason.startswith(f"checkpoint {damaged.uri}/{CHECKPOINT_FILE} holds objects that weights_only")
    assert point.snapshot_problem.startswith(f"Ray's snapshot {prefix}/checkpoint_manager_snapshot.json is unreadable")
    aside = set_snapshot_aside(storage, "run")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="runs/run/")["Contents"]}
    assert aside.startswith(f"{prefix}/checkpoint_manager_snapshot.json.set-aside-")
    assert aside.removeprefix(f"s3://{s3_bucket}/") in keys and "runs/run/checkpoint_manager_snapshot.json" not in keys
