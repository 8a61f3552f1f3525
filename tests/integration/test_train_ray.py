"""Distributed training on a real local Ray (2 CPUs, `ray_local`), data ingested from a real moto S3.

Each Ray fit costs ~50 s here (worker processes importing torch on 2 cores), so the slow tests combine
scenarios: one local run (DDP sync, loss, checkpoints, max_steps, export) and one S3 run (a failing
fit with max_failures=0, then a re-run that resumes from the bucket and survives a worker crash).
That a resumed run ends with an uninterrupted run's weights is checked in test_train_damage.
Workers crash through the callback ``CrashOnce``, defined here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import ray.train
import torch

from cyclegan_core.inference.translator import Translator
from cyclegan_core.training.checkpoint import load_checkpoint
from cyclegan_core.training.distributed import parameter_checksum
from cyclegan_core.training.fit import EpochEnd, FitCallback
from cyclegan_core.training.model import CycleGAN
from pipelines.config import PipelineConfig, ResolvedConfig, Services, resolve
from pipelines.ingest import ingest_prefix, upload_folder
from pipelines.records import DatasetRef
from pipelines.train import TrainingError, train_on_ray
from pipelines.train.cluster import check_storage_shared
from pipelines.train.layout import (
    CHECKPOINT_FILE,
    PROGRESS_FILE,
    read_progress,
    restore_from_folder,
    write_checkpoint_folder,
)
from pipelines.train.progress import RunProgress, epoch_metrics, format_epoch_line
from pipelines.train.storage import resolve_storage
from pipelines.train.worker import ARGS_KEY, WorkerArgs, should_checkpoint
from tests.conftest import RayCluster

IMAGES_PER_WORKER = 12  # 24 training images per domain (the synthetic_dataset fixture), 2 workers
STEPS_PER_EPOCH = IMAGES_PER_WORKER  # at batch size 1


def tiny_config(dataset: DatasetRef, tmp_path: Path, *, run_name: str, storage_path: str, epochs: int,
                batch_size: int = 1, **run: object) -> ResolvedConfig:
    return resolve(PipelineConfig.model_validate({
        "dataset_uri": dataset.uri,
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "outputs"),
        "model": {"generator": "resnet_6blocks", "ngf": 8, "ndf": 8},
        "train": {"n_epochs": epochs, "n_epochs_decay": 0, "batch_size": batch_size, "lr": 1e-3, "pool_size": 10},
        "data": {"preprocess": "none", "load_size": 32, "crop_size": 32, "num_workers": 0},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"run_name": run_name, "storage_path": storage_path, **run},
    }))


@dataclass(frozen=True)
class CrashOnce(FitCallback):
    """A worker callback: the worker of world rank ``rank`` dies hard (``os._exit(1)``, like an
    OOM-killed or preempted worker) after global step ``at_step``, once across restarts: it creates
    ``marker`` first (tests run on one node, so every worker sees it). Before dying it waits until Ray
    Train has committed the checkpoints reported so far, so the crash lands after the last one."""

    at_step: int
    marker: Path
    rank: int = 1

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        if step != self.at_step or model.rank != self.rank or self.marker.exists():
            return
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=300)
        self.marker.write_text(f"rank {model.rank} exited at step {step}\n")
        os._exit(1)


@pytest.fixture()
def ingested(synthetic_dataset: Path, s3_bucket: str, tmp_path: Path) -> DatasetRef:
    uri = f"s3://{s3_bucket}/synth"
    upload_folder(synthetic_dataset, uri)
    return ingest_prefix(uri, tmp_path / "cache", load_size=32).dataset


def epoch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The driver's progress lines (logged as the workers' reports arrive)."""
    return [r.getMessage() for r in caplog.records if r.name == "pipelines.train.progress"
            and r.getMessage().startswith("epoch ")]


# --- fast: the pure parts ------------------------------------------------------------------------


def test_local_storage_is_refused_on_a_multi_node_cluster() -> None:
    check_storage_shared("./runs", 1)
    check_storage_shared("s3://bucket/runs", 3)
    with pytest.raises(ValueError, match=r"storage_path \./runs is local but the Ray cluster has 3 nodes; use s3://"):
        check_storage_shared("./runs", 3)


def test_storage_paths_resolve_for_ray(tmp_path: Path) -> None:
    local = resolve_storage(str(tmp_path / "runs"), Services())
    assert local.filesystem is None and local.path == str(tmp_path / "runs") and local.uri("/x") == "/x"
    with pytest.raises(ValueError, match="'runs' is relative"):
        resolve_storage("runs", Services())

    services = Services(s3_endpoint_url="http://127.0.0.1:9000", s3_region="eu-west-1")
    s3 = resolve_storage("s3://bucket/some/prefix/", services)
    assert s3.path == "bucket/some/prefix" and s3.filesystem.type_name == "s3"
    assert s3.filesystem.region == "eu-west-1"  # from config.services, not the environment
    assert s3.uri("bucket/some/prefix/run") == "s3://bucket/some/prefix/run"
    assert resolve_storage("s3://bucket", Services()).filesystem.region == "us-east-1"
    with pytest.raises(ValueError, match="gs://b/runs"):
        resolve_storage("gs://b/runs", services)


def test_checkpoint_cadence() -> None:
    every_two = [e for e in range(1, 8) if should_checkpoint(e, every=2, total=7, stopped_early=False)]
    assert every_two == [2, 4, 6, 7]
    assert should_checkpoint(3, every=5, total=9, stopped_early=True)


def test_worker_args_travel_as_ray_pickles_train_loop_config(ingested: DatasetRef, tmp_path: Path) -> None:
    config = tiny_config(ingested, tmp_path, run_name="pickled", storage_path=str(tmp_path / "runs"), epochs=1)
    args = WorkerArgs(config, ingested, callbacks=(CrashOnce(at_step=3, marker=tmp_path / "crash"),))
    loop_config = args.loop_config()
    assert isinstance(loop_config, dict) and loop_config[ARGS_KEY] is args  # V2 takes a dict (its run state)
    assert ray.cloudpickle.loads(ray.cloudpickle.dumps(loop_config)) == {ARGS_KEY: args}


def test_epoch_line_is_readable() -> None:
    line = format_epoch_line({"epoch": 3, "total_epochs": 10, "step": 36, "loss_cycle_A": 1.23456,
                              "lr": 2e-4, "images_per_s": 41.0, "epoch_seconds": 0.6, "partial_epoch": 0.0})
    assert line == "epoch 3/10 step 36 cycle_A=1.235 lr=2.00e-04 41.0 img/s (0.6s) ETA 4s"


def test_epoch_metrics_is_one_flat_record() -> None:
    end = EpochEnd(epoch=1, progress=1.5, steps=6, seconds=2.0, stopped=True, partial=True,
                   loss_sums={"cycle_A": 3.0}, lr=1e-4, images_per_s=6.0, gpu_mem_peak_gb=None)
    metrics = epoch_metrics(end, step=18, total_epochs=4, loss_means={"cycle_A": 0.5}, checksums=[2.0, 2.0],
                            nodes=1)
    assert metrics == {
        "loss_cycle_A": 0.5, "G_AB_checksum_rank0": 2.0, "G_AB_checksum_rank1": 2.0, "weights_in_sync": 1.0,
        "nodes": 1.0, "epoch": 1.5, "total_epochs": 4.0, "step": 18.0, "lr": 1e-4, "epoch_seconds": 2.0,
        "images_per_s": 6.0, "partial_epoch": 1.0, "world_size": 2.0}
    assert all(isinstance(v, float) for v in metrics.values())
    assert epoch_metrics(end, step=18, total_epochs=4, loss_means={}, checksums=[2.0, 2.5],
                         nodes=1)["weights_in_sync"] == 0.0
    assert format_epoch_line(metrics).endswith("(stopped at max_steps)")


def test_checkpoint_folder_round_trips_the_state_the_progress_and_each_ranks_pools(tmp_path: Path) -> None:
    config = tiny_config(DatasetRef(uri="s3://b/p", root=tmp_path, manifest=tmp_path / "m.json", version="v"),
                         tmp_path, run_name="layout", storage_path=str(tmp_path / "runs"), epochs=2)
    ranks = []
    for rank in (0, 1):
        model = CycleGAN(config.model, config.train)
        model.fake_A_pool.query(torch.full((1, 3, 32, 32), float(rank)))  # per-rank pool contents
        ranks.append(model)
    progress = RunProgress(dataset_version="v", dataset_uri="s3://b/p", epoch=1, step=12,
                           history=[{"epoch": 1.0, "step": 12.0}])
    for rank, model in enumerate(ranks):
        write_checkpoint_folder(tmp_path / "ckpt", model, progress, rank=rank)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {CHECKPOINT_FILE, PROGRESS_FILE, "rank1_pools.pt"}
    assert read_progress(tmp_path / "ckpt") == progress

    for rank, model in enumerate(ranks):
        restored = CycleGAN(config.model, config.train)
        assert restore_from_folder(restored, tmp_path / "ckpt", rank=rank) == progress
        assert torch.equal(restored.fake_A_pool.state_dict()["images"], model.fake_A_pool.state_dict()["images"])
    # a rank the run did not have (resumed with more workers) starts from rank 0's pools
    extra = CycleGAN(config.model, config.train)
    restore_from_folder(extra, tmp_path / "ckpt", rank=2)
    assert torch.equal(extra.fake_A_pool.state_dict()["images"], ranks[0].fake_A_pool.state_dict()["images"])


# --- slow: real Ray fits -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_train_in_sync_checkpoint_and_export(ray_local: None, ingested: DatasetRef,
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    max_steps = 3 * STEPS_PER_EPOCH + 5  # stops 5 steps into epoch 4 of 5
    config = tiny_config(ingested, tmp_path, run_name="sync", storage_path=str(tmp_path / "runs"),
                         epochs=5, checkpoint_every_epochs=2, num_to_keep=2, max_steps=max_steps)
    # nothing evaluated: the last checkpoint is exported (the best one: test_besteval_ray)
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"every_epochs": 0})})
    caplog.set_level(logging.INFO, logger="pipelines.train")

    result = train_on_ray(config, ingested)

    run_name = config.ray_run_name(ingested.version)
    assert run_name.startswith("sync-")
    assert (result.run_name, result.dataset_version, result.dataset_uri) == (run_name, ingested.version, ingested.uri)
    assert result.fingerprint == config.fingerprint
    assert result.steps == max_steps and result.epochs == 3
    assert [int(h["epoch"]) for h in result.history[:-1]] == [1, 2, 3]
    assert result.history[-1]["partial_epoch"] == 1.0 and result.history[-1]["step"] == max_steps
    # the driver logged every epoch's line as it arrived
    assert [int(re.search(r" step (\d+) ", line)[1]) for line in epoch_lines(caplog)] == [
        h["step"] for h in result.history]
    assert result.history[0]["loss_cycle_A"] > result.history[-2]["loss_cycle_A"]
    assert result.history[0]["loss_cycle_B"] > result.history[-2]["loss_cycle_B"]
    for epoch in result.history:  # DDP kept both ranks' weights identical, every epoch
        assert epoch["G_AB_checksum_rank0"] == epoch["G_AB_checksum_rank1"] and epoch["weights_in_sync"] == 1.0
        assert epoch["world_size"] == 2 and epoch["images_per_s"] > 0 and epoch["nodes"] == 1

    checkpoint = Path(result.checkpoint_uri)
    assert checkpoint.parent == tmp_path / "runs" / run_name
    assert checkpoint.name == f"checkpoint_epoch0003_step{max_steps:08d}"
    assert {p.name for p in checkpoint.iterdir()} >= {CHECKPOINT_FILE, PROGRESS_FILE, "rank1_pools.pt"}
    kept = sorted(p.name for p in checkpoint.parent.glob("checkpoint_epoch*"))
    assert kept == [f"checkpoint_epoch0002_step{2 * STEPS_PER_EPOCH:08d}", checkpoint.name]  # num_to_keep=2
    assert read_progress(checkpoint).history == result.history  # one schema: reported, stored, returned
    model = CycleGAN(config.model, config.train)
    load_checkpoint(model, checkpoint / CHECKPOINT_FILE)
    assert (model.epoch, model.step) == (3, max_steps)

    assert result.generators_dir == tmp_path / "outputs" / run_name / "generators"
    translator = Translator.from_pretrained(result.generators_dir, device="cpu")
    assert translator.config == config.model and translator.directions == ("AtoB", "BtoA")
    assert parameter_checksum(translator.generator("AtoB")) == result.metrics["G_AB_checksum_rank0"]
    assert result.best_epoch is None and not any(key.startswith("eval_") for key in result.metrics)

    # A later call for the finished run (max_steps reached) exports it again from Ray's record of the
    # run, without starting workers.
    shutil.rmtree(result.generators_dir)
    caplog.clear()
    assert train_on_ray(config, ingested) == result
    assert Translator.from_pretrained(result.generators_dir, device="cpu").config == config.model
    assert any("has finished training (epoch 3, step" in r.getMessage() for r in caplog.records), caplog.text
    assert not epoch_lines(caplog) and sorted(p.name for p in checkpoint.parent.glob("checkpoint_epoch*")) == kept


def bucket_keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.mark.slow
def test_s3_storage_worker_failure_and_resume(ray_local: None, ingested: DatasetRef, s3_bucket: str,
                                              tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = f"s3://{s3_bucket}/runs"
    # A node without the dataset cache ingests it itself (here: every worker's node, after this).
    shutil.rmtree(ingested.root)

    steps = IMAGES_PER_WORKER // 2  # per epoch, at batch size 2 (fewer, cheaper steps)
    # 1. A worker dies in epoch 2 and no failure is tolerated: a clear error, the epoch-1 checkpoint stays.
    first = tiny_config(ingested, tmp_path, run_name="faulty", storage_path=storage, epochs=4, max_failures=0,
                        batch_size=2)
    run_name = first.ray_run_name(ingested.version)
    crash = CrashOnce(at_step=steps + 3, marker=tmp_path / "crash-1")
    with pytest.raises(TrainingError, match=rf"training run {run_name} failed \(run.max_failures=0\)") as failed:
        train_on_ray(first, ingested, callbacks=[crash])
    assert crash.marker.exists() and ingested.root.is_dir()
    last_good = f"runs/{run_name}/checkpoint_epoch0001_step{steps:08d}"
    assert failed.value.checkpoint_uri == f"s3://{s3_bucket}/{last_good}"
    assert f"s3://{s3_bucket}/{last_good}" in str(failed.value)
    assert f"{last_good}/{CHECKPOINT_FILE}" in bucket_keys(s3_bucket, f"runs/{run_name}/")
    boto3.client("s3").download_file(s3_bucket, f"{last_good}/{CHECKPOINT_FILE}", str(tmp_path / "last-good.pt"))
    model = CycleGAN(first.model, first.train)
    load_checkpoint(model, tmp_path / "last-good.pt")
    assert (model.epoch, model.step) == (1, steps)

    # 2. The same config re-run (a retry), one failure tolerated (max_failures is not part of the run's
    #    identity): resumes from the bucket at epoch 2, a worker dies in epoch 3, Ray Train restarts the
    #    group from the epoch-2 checkpoint, and it ends.
    second = tiny_config(ingested, tmp_path, run_name="faulty", storage_path=storage, epochs=4, max_failures=1,
                         batch_size=2)
    assert second.ray_run_name(ingested.version) == run_name
    crash = CrashOnce(at_step=2 * steps + 5, marker=tmp_path / "crash-2")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="pipelines.train")
    result = train_on_ray(second, ingested, callbacks=[crash])

    assert crash.marker.exists()
    assert [int(line.split()[1].split("/")[0]) for line in epoch_lines(caplog)] == [2, 3, 4]
    # the driver warned about the crash (rank 0 fails too: its collective lost its peer)
    assert any(re.match(r"worker rank\(s\) \[(\d, )*1\] failed: .* Ray Train restarts", r.getMessage())
               for r in caplog.records)
    assert result.epochs == 4 and result.steps == 4 * steps
    assert [int(h["epoch"]) for h in result.history] == [1, 2, 3, 4]
    assert result.history[0]["step"] == steps  # run 1's epoch, carried in the checkpoint
    final = f"runs/{run_name}/checkpoint_epoch0004_step{4 * steps:08d}"
    assert result.checkpoint_uri == f"s3://{s3_bucket}/{final}"
    assert f"{final}/{PROGRESS_FILE}" in bucket_keys(s3_bucket, f"runs/{run_name}/")
    assert (result.generators_dir / "G_AB").is_dir() and (result.generators_dir / "G_BA").is_dir()


@pytest.mark.slow
def test_two_node_cluster_needs_s3_storage_and_trains_across_nodes(
    s3_bucket: str, ray_two_nodes: RayCluster, synthetic_dataset: Path, tmp_path: Path
) -> None:
    """`cyclegan train` against a real two-node cluster (`ray start --head` + `ray start --address`, one
    CPU each): a local storage path is refused; through Ray Client (ray://), S3 storage trains one
    worker per node in sync."""
    uri = f"s3://{s3_bucket}/synth"
    upload_folder(synthetic_dataset, uri)
    dataset = DatasetRef(uri=uri, root=tmp_path / "unused", manifest=tmp_path / "unused.json", version="-")
    config = tiny_config(dataset, tmp_path, run_name="two-nodes", storage_path=f"s3://{s3_bucket}/runs",
                         epochs=1, batch_size=4)
    config_file = tmp_path / "config.json"  # JSON is YAML
    config_file.write_text(config.user_config().model_dump_json())
    cyclegan = str(Path(sys.executable).with_name("cyclegan"))
    env = {**os.environ, **ray_two_nodes.env}

    local = subprocess.run([cyclegan, "train", "--config", str(config_file), "--set",
                            f"run.storage_path={tmp_path / 'runs'}"], env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert local.returncode != 0
    message = " ".join((local.stderr + local.stdout).split())  # the CLI wraps long lines
    assert "is local but the Ray cluster has 2 nodes; use s3://bucket/prefix shared storage" in message

    client_env = env | {"RAY_ADDRESS": ray_two_nodes.client_address}
    done = subprocess.run([cyclegan, "train", "--config", str(config_file), "--json"], env=client_env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{ray_two_nodes.client_server_logs()}"
    assert f"connecting to the Ray cluster at {ray_two_nodes.client_address}" in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (epoch,) = result["history"]
    assert (epoch["world_size"], epoch["nodes"], epoch["weights_in_sync"]) == (2, 2, 1.0)
    assert result["run_name"].startswith("two-nodes-") and result["fingerprint"] == config.fingerprint
    assert result["checkpoint_uri"].startswith(f"s3://{s3_bucket}/runs/{result['run_name']}/checkpoint_epoch0001")
    assert any(key.endswith(CHECKPOINT_FILE) for key in bucket_keys(s3_bucket, f"runs/{result['run_name']}/"))
