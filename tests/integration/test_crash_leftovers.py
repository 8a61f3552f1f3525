"""A writer SIGKILLed inside a write leaves its temporaries; the next run removes them, never a live one's.

Real processes, real SIGKILLs: ``paused_writer.py`` runs the real ``cyclegan ingest`` (from the moto
S3 server) or a real Ray training and stops for good just before one file is committed (the
temporary complete on disk), so the kill lands inside the write every time. A training worker is
also killed in the middle of a checkpoint upload (a loopback proxy in front of the S3 server holds it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cyclegan_core.atomic import SCRATCH_PREFIX, parse_temp_name, pid_running, sweep_stale_temps
from cyclegan_core.config import ModelConfig
from cyclegan_core.data.cache import CACHE_SPLITS, fresh_cache_array, write_decoded_cache
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import generator_from_config
from pipelines.clients.s3 import make_s3_client
from pipelines.config import Services
from pipelines.ingest import MANIFEST_FILE, ingest_prefix, upload_folder
from pipelines.ingest.download import sweep_dead_temps
from pipelines.records import DatasetRef, TrainResult
from pipelines.train.resume import find_resume_point
from pipelines.train.storage import resolve_storage
from tests.conftest import clean_ray_env
from tests.integration.faulty_proxy import FaultyProxy

PAUSED_WRITER = Path(__file__).with_name("paused_writer.py")
LOAD_SIZE = 32


@pytest.fixture()
def uploaded(synthetic_dataset: Path, s3_bucket: str) -> str:
    uri = f"s3://{s3_bucket}/synth"
    upload_folder(synthetic_dataset, uri)
    return uri


@pytest.fixture()
def s3(s3_server: str) -> Any:
    return make_s3_client(endpoint_url=s3_server)


class Paused:
    """A process stopped inside a write: ``pid`` (the writer, maybe a child of ``process``) and ``temp``."""

    def __init__(self, cmd: list[str], ready: Path, log: Path, *, env: dict[str, str] | None = None,
                 timeout_s: float = 120) -> None:
        with open(log, "wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{cmd[3:]} did not pause (exit {self.process.returncode}):\n"
                                     f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        note = json.loads(ready.read_text())
        self.pid: int = note["pid"]
        self.temp = Path(note["temp"])

    def kill(self) -> None:
        """SIGKILL the writer and wait until it is gone."""
        os.kill(self.pid, signal.SIGKILL)
        if self.pid == self.process.pid:
            self.process.wait(timeout=30)
        wait_dead(self.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def wait_dead(pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_running(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs {timeout_s}s after SIGKILL"
        time.sleep(0.05)


def paused_ingest(name: str, uri: str, cache: Path, tmp_path: Path) -> Paused:
    ready = tmp_path / f"paused-{name}.json"
    cmd = [sys.executable, str(PAUSED_WRITER), name, str(ready), "cli", "ingest", uri, "--cache", str(cache),
           "--load-size", str(LOAD_SIZE), "--endpoint-url", os.environ["AWS_ENDPOINT_URL"]]
    return Paused(cmd, ready, tmp_path / f"paused-{name}.log")


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if parse_temp_name(p.name))


def assert_same_cache(root: Path, reference: Path) -> None:
    """The same manifest (version, entries) and the same pre-decoded arrays as a clean ingest."""
    ours, theirs = (json.loads((r / MANIFEST_FILE).read_text()) for r in (root, reference))
    assert ours["version"] == theirs["version"]
    strip = ("local_mtime_ns",)
    assert [{k: v for k, v in e.items() if k not in strip} for e in ours["objects"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in theirs["objects"]]
    for split in CACHE_SPLITS:
        array = fresh_cache_array(root, split, LOAD_SIZE)
        assert array is not None, f"decoded cache of {split} is missing or stale"
        assert np.array_equal(np.load(array), np.load(fresh_cache_array(reference, split, LOAD_SIZE)))


@pytest.fixture()
def reference(uploaded: str, s3: Any, tmp_path: Path) -> Path:
    return ingest_prefix(uploaded, tmp_path / "clean", load_size=LOAD_SIZE, client=s3).root


# `00003.png`: a downloaded image moved from .staging/ into its split; `manifest.json`: the manifest
# write; `trainA.npy`: the pre-decoded cache of trainA.
@pytest.mark.parametrize(("commit_of", "left_in"), [
    ("00003.png", ".staging"), ("manifest.json", "."), ("trainA.npy", f".decoded/{LOAD_SIZE}"),
])
def test_an_ingest_killed_inside_a_write_is_cleaned_up_by_the_next_ingest(
        commit_of: str, left_in: str, uploaded: str, s3: Any, reference: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paused = paused_ingest(commit_of, uploaded, cache, tmp_path)
    paused.kill()
    root = cache / reference.relative_to(tmp_path / "clean")
    assert paused.temp.is_file() and paused.temp.parent == (root / left_in).resolve()
    assert parse_temp_name(paused.temp.name).pid == paused.pid
    assert not (root / left_in / commit_of).exists()

    again = ingest_prefix(uploaded, cache, load_size=LOAD_SIZE, client=s3)

    assert again.root == root.resolve()
    assert temporaries(root) == [] and not (root / ".staging").exists()
    assert_same_cache(root, reference)


def test_a_live_writers_temporary_survives_a_concurrent_sweep_and_goes_once_it_is_killed(
        uploaded: str, reference: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paused = paused_ingest("trainA.npy", uploaded, cache, tmp_path)
    root = cache / reference.relative_to(tmp_path / "clean")
    try:
        # while it runs (old, but locked), this process sweeps the same folders and writes the same cache
        os.utime(paused.temp, (0, 0))
        assert sweep_dead_temps(root) == 0
        write_decoded_cache(root, load_size=LOAD_SIZE)
        assert paused.temp.is_file()
        assert fresh_cache_array(root, "trainA", LOAD_SIZE) is not None
    finally:
        paused.kill()
    assert paused.temp.is_file()

    write_decoded_cache(root, load_size=LOAD_SIZE)

    assert temporaries(root) == []
    for split in CACHE_SPLITS:
        assert np.array_equal(np.load(fresh_cache_array(root, split, LOAD_SIZE)),
                              np.load(fresh_cache_array(reference, split, LOAD_SIZE)))


FORKING_WRITER = textwrap.dedent("""
    import json, os, sys, threading
    from pathlib import Path
    from cyclegan_core.atomic import atomic_path

    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half")
        child = os.fork()  # the child inherits the open temporary, and with it the lock
        if child:
            Path(sys.argv[2]).write_text(json.dumps({"pid": os.getpid(), "child": child, "temp": str(tmp)}))
        threading.Event().wait()
""")


def test_an_atomic_write_killed_while_a_forked_child_holds_its_temporary(tmp_path: Path) -> None:
    """The lock, not the pid, keeps a temporary live: its writer is dead but a child still holds it."""
    dest, ready = tmp_path / "out" / "result.json", tmp_path / "ready.json"
    paused = Paused([sys.executable, "-c", FORKING_WRITER, str(dest), str(ready)], ready, tmp_path / "fork.log")
    child = json.loads(ready.read_text())["child"]
    try:
        paused.kill()
        assert sweep_stale_temps(dest.parent) == []
        assert paused.temp.is_file() and not dest.exists()
    finally:
        os.kill(child, signal.SIGKILL)
    wait_dead(child)

    assert sweep_stale_temps(dest.parent) == [paused.temp]
    assert list(dest.parent.iterdir()) == []


def test_an_export_killed_before_its_rename_leaves_a_folder_the_next_export_removes(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "model"
    ready = tmp_path / "paused-export.json"
    paused = Paused([sys.executable, str(PAUSED_WRITER), "model", str(ready), "export", str(dest)], ready,
                    tmp_path / "export.log")
    paused.kill()
    build = paused.temp
    assert build.parent == dest.parent.resolve() and {p.name for p in build.iterdir()} == {"G_AB", "G_BA"}
    assert not dest.exists()

    torch.manual_seed(0)
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4)
    Translator(generator_from_config(cfg), generator_from_config(cfg), cfg).save_pretrained(dest)

    assert [p.name for p in dest.parent.iterdir()] == ["model"]
    assert Translator.from_pretrained(dest, device="cpu").directions == ("AtoB", "BtoA")


def test_an_evaluation_killed_inside_its_report_write_is_cleaned_up_by_the_next(
        synthetic_dataset: Path, tmp_path: Path) -> None:
    model, out = tmp_path / "model", tmp_path / "eval"
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4)
    Translator(generator_from_config(cfg), generator_from_config(cfg), cfg).save_pretrained(model)
    args = ["evaluate", "--model", str(model), "--data", str(synthetic_dataset), "--out", str(out),
            "--max-images", "3"]
    ready = tmp_path / "paused-eval.json"
    env = os.environ | {"TORCH_HOME": str(tmp_path / "torch")}  # no cached Inception file: FID is skipped
    paused = Paused([sys.executable, str(PAUSED_WRITER), "eval_report.json", str(ready), "cli", *args], ready,
                    tmp_path / "eval.log", env=env)
    paused.kill()
    assert paused.temp.parent == out.resolve() and parse_temp_name(paused.temp.name).pid == paused.pid
    assert not (out / "eval_report.json").exists()

    done = subprocess.run([str(Path(sys.executable).with_name("cyclegan")), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert temporaries(out) == []
    assert "psnr_AtoB" in json.loads((out / "eval_report.json").read_text())["metrics"]


def tiny_training_config(dataset: DatasetRef, tmp_path: Path, *, storage_path: str) -> Path:
    config = {
        "dataset_uri": dataset.uri, "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "outputs"),
        "model": {"generator": "resnet_6blocks", "ngf": 8, "ndf": 8},
        "train": {"n_epochs": 2, "n_epochs_decay": 0, "batch_size": 4, "lr": 1e-3, "pool_size": 10},
        "data": {"preprocess": "none", "load_size": LOAD_SIZE, "crop_size": LOAD_SIZE, "num_workers": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "local_num_cpus": 2},
        "run": {"run_name": "killed", "storage_path": storage_path, "max_failures": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture()
def ingested(uploaded: str, s3: Any, tmp_path: Path) -> DatasetRef:
    return ingest_prefix(uploaded, tmp_path / "cache", load_size=LOAD_SIZE, client=s3).dataset


def uploads_second_checkpoint_state(method: str, path: str) -> bool:
    """The PUT of the epoch-2 checkpoint's training state (``FaultyProxy.hold``)."""
    return method == "PUT" and "/checkpoint_epoch0002_" in path and "/cyclegan.pt" in path


def pid_of_a_later_worker(pids: Path, first: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        later = [int(line) for line in pids.read_text().split()] if pids.exists() else []
        later = [pid for pid in later if pid != first]
        if later:
            return later[-1]
        assert time.monotonic() < deadline, f"no worker after {first} started within {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_training_workers_killed_mid_checkpoint_and_mid_upload_resume_from_a_complete_checkpoint(
        ingested: DatasetRef, s3_bucket: str, tmp_path: Path) -> None:
    """Rank 0's worker is SIGKILLed while writing its first checkpoint into its scratch folder; Ray
    restarts it (max_failures=2), its first checkpoint sweeps the dead worker's folder. The restarted
    worker is SIGKILLed in turn while its epoch-2 checkpoint uploads to S3 (asynchronously: training
    went on; a loopback proxy holds the upload): the next restart resumes from the complete epoch-1
    checkpoint, not from the half-uploaded one, and the run ends."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    scratch = tmpdir / f"{SCRATCH_PREFIX}checkpoints"
    dataset_file = tmp_path / "dataset.json"
    dataset_file.write_text(ingested.model_dump_json())
    ready, result_file, pids = tmp_path / "paused-worker.json", tmp_path / "result.json", tmp_path / "pids"
    config = tiny_training_config(ingested, tmp_path, storage_path=f"s3://{s3_bucket}/runs")
    log = tmp_path / "train.log"
    with FaultyProxy(os.environ["AWS_ENDPOINT_URL"], fail_every=0, drop_every=0, truncate_every=0,
                     hold=uploads_second_checkpoint_state) as proxy:
        # TMPDIR is where the workers' scratch goes; Ray's own session folder stays short (socket paths)
        env = clean_ray_env(tmp_path / "home") | {"TMPDIR": str(tmpdir), "RAY_TMPDIR": "/tmp",
                                                  "AWS_ENDPOINT_URL": proxy.url}
        cmd = [sys.executable, str(PAUSED_WRITER), "cyclegan.pt", str(ready), "train", str(config),
               str(dataset_file), str(result_file), str(pids)]
        paused = Paused(cmd, ready, log, env=env, timeout_s=420)
        try:
            folder = paused.temp.parent
            assert folder.parent == scratch.resolve() and parse_temp_name(folder.name).pid == paused.pid
            paused.kill()
            assert proxy.held.wait(timeout=420), log.read_text()[-3000:]
            uploading = pid_of_a_later_worker(pids, paused.pid)
            os.kill(uploading, signal.SIGKILL)  # its epoch-2 checkpoint is half-way to S3
            wait_dead(uploading)
            proxy.release()
            assert paused.process.wait(timeout=480) == 0, log.read_text()[-3000:]
        finally:
            paused.stop()

    result = TrainResult.model_validate_json(result_file.read_text())
    assert not folder.exists() and list(scratch.iterdir()) == []
    assert temporaries(tmpdir) == []  # nor the driver's export scratch (<tmp>/cyclegan-final/)
    assert result.epochs == 2 and [int(h["epoch"]) for h in result.history] == [1, 2]
    text = log.read_text()
    # the driver saw epoch 1 once: the last restart resumed from its checkpoint, not from scratch
    assert re.findall(r"epoch (\d)/2 step", text) == ["1", "2"], text[-3000:]
    assert text.count("Ray Train restarts from the latest checkpoint") >= 2, text[-3000:]
    storage = resolve_storage(f"s3://{s3_bucket}/runs", Services(s3_endpoint_url=os.environ["AWS_ENDPOINT_URL"]))
    point = find_resume_point(storage, result.run_name)  # the final checkpoint, complete, what Ray records
    assert point.ray_latest and not point.damaged and point.progress.epoch == 2
    assert storage.uri(point.checkpoint.path) == result.checkpoint_uri
