"""How long each checkpoint holds training: ``run.checkpoint_upload`` sync against async, on s3:// storage.

The storage is moto's S3 server behind a loopback proxy limited to ``--bandwidth-mb`` MB/s (both
directions together: tests/integration/faulty_proxy.py, its faults off), the model the default one
(resnet_9blocks, ngf = ndf = 64: a checkpoint of ~340 MB with both Adams' moments). Each configuration
is one ``pipelines.train.train_on_ray`` run (local Ray, one worker, evaluation off, batch 1, a tiny
synthetic dataset so that an epoch is ``--images`` steps), all in one process and one Ray session:

- ``none``: a checkpoint only at the end (the epoch boundaries carry no checkpoint);
- ``sync``: a checkpoint every epoch, the worker waits for its upload (Ray's SYNC mode);
- ``async``: a checkpoint every epoch, uploaded by Ray's upload thread while training goes on.

A step hook on rank 0 notes when each step ends. An epoch boundary is the time from the last step of an
epoch to the end of the first step of the next (the end-of-epoch work, the checkpoint, the report and
one step); ``blocked_s`` = boundary - the median step inside epochs: what the checkpoint (plus the
report) costs training at that boundary; ``blocked_mean_s`` averages all but the first boundary (the
first report also pays Ray's first synchronisation). ``none``'s figure is the boundary's cost without a
checkpoint.
Keep an epoch longer than an upload (``--images``): with async, a checkpoint due while the previous one
still uploads waits for it. Prints one JSON line per configuration::

    python benchmarks/checkpoint_upload.py --bandwidth-mb 20 --images 8 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.training.fit import FitCallback
from cyclegan_core.training.model import CycleGAN

MODES = ("none", "sync", "async")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="training image side (the model's size is what counts)")
    parser.add_argument("--images", type=int, default=10, help="training images per domain = steps per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per configuration (>= 2)")
    parser.add_argument("--bandwidth-mb", type=float, default=20.0, help="the proxy's limit, MB/s (0: none)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the worker (torch threads)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: a boundary is between two epochs")
    return args


class StepClock(FitCallback):
    """A worker callback: rank 0 appends ``<step> <time>`` to ``path`` after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        if model.rank == 0:
            with open(self.path, "a") as out:
                out.write(f"{step} {time.time()}\n")


def boundary_costs(times: dict[int, float], *, steps_per_epoch: int) -> dict[str, Any]:
    """Epoch boundaries, the median step inside epochs and the boundaries' cost beyond one step (pure).
    ``blocked_mean_s`` leaves out the first boundary when there are others: a run's first report also
    pays Ray's first synchronisation (measured up to ~17 s on a loaded 2-core host, checkpoint or not)."""
    steps = sorted(times)
    gaps = {step: times[step] - times[previous] for previous, step in pairwise(steps)}
    boundary = {step: gap for step, gap in gaps.items() if (step - 1) % steps_per_epoch == 0}
    inside = [gap for step, gap in gaps.items() if step not in boundary]
    step_s = statistics.median(inside) if inside else 0.0
    boundaries = [round(boundary[step], 3) for step in sorted(boundary)]
    blocked = [round(gap - step_s, 3) for gap in boundaries]
    steady = blocked[1:] or blocked
    return {"boundaries_s": boundaries, "median_step_s": round(step_s, 3), "blocked_s": blocked,
            "blocked_mean_s": round(statistics.fmean(steady), 3) if steady else None}


def read_clock(path: Path) -> dict[int, float]:
    times: dict[int, float] = {}
    for line in path.read_text().split("\n"):
        if line:
            step, moment = line.split()
            times[int(step)] = float(moment)  # a restarted worker would note a step again: the last counts
    return times


def host() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def checkpoint_mb(bucket: str, prefix: str) -> float:
    """The size of the run's last checkpoint folder under ``prefix``, MB."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    folders: dict[str, int] = {}
    for obj in (obj for page in pages for obj in page.get("Contents", [])):
        folder = next((part for part in obj["Key"].split("/") if part.startswith("checkpoint_epoch")), None)
        if folder is not None:
            folders[folder] = folders.get(folder, 0) + obj["Size"]
    return round(folders[max(folders)] / 1e6, 1) if folders else 0.0


def run_mode(mode: str, args: argparse.Namespace, dataset: Any, proxy_url: str, bucket: str, work: Path) -> dict:
    from pipelines.config import PipelineConfig, resolve
    from pipelines.train import train_on_ray

    config = resolve(PipelineConfig.model_validate({
        "dataset_uri": dataset.uri, "cache_dir": str(work / "cache"), "output_dir": str(work / "outputs" / mode),
        "model": {"generator": args.generator, "ngf": args.ngf, "ndf": args.ndf},
        "train": {"n_epochs": args.epochs, "n_epochs_decay": 0, "batch_size": 1, "precision": "fp32"},
        "data": {"preprocess": "none", "load_size": args.size, "crop_size": args.size, "num_workers": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": args.cpus, "local_num_cpus": args.cpus},
        "run": {"run_name": f"bench-{mode}", "storage_path": f"s3://{bucket}/{mode}", "num_to_keep": 1,
                "max_failures": 0, "checkpoint_every_epochs": 1 if mode != "none" else args.epochs + 1,
                "checkpoint_upload": "sync" if mode == "none" else mode},
        "eval": {"every_epochs": 0},
    }), env={**os.environ, "AWS_ENDPOINT_URL": proxy_url})
    clock = work / f"steps-{mode}.txt"
    started = time.perf_counter()
    train_on_ray(config, dataset, callbacks=[StepClock(clock)])
    wall = time.perf_counter() - started
    return {"config": mode, **boundary_costs(read_clock(clock), steps_per_epoch=args.images),
            "fit_wall_s": round(wall, 1), "checkpoint_mb": checkpoint_mb(bucket, f"{mode}/")}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import boto3

    from cyclegan_core.data.synthetic import make_synthetic_dataset
    from pipelines.clients.embedded import embedded_s3
    from pipelines.ingest import ingest_prefix, upload_folder
    from tests.integration.faulty_proxy import FaultyProxy

    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp, embedded_s3() as endpoint:
        work = Path(tmp)
        bucket = "bench-checkpoints"
        boto3.client("s3").create_bucket(Bucket=bucket)
        folder = make_synthetic_dataset(work / "synth", size=args.size, n_train=args.images, n_test=2, seed=0)
        upload_folder(folder, f"s3://{bucket}/data")
        dataset = ingest_prefix(f"s3://{bucket}/data", work / "cache", load_size=args.size).dataset
        with FaultyProxy(endpoint, fail_every=0, drop_every=0, truncate_every=0,
                         bytes_per_s=args.bandwidth_mb * 1e6) as proxy:
            for mode in args.modes:
                figures = run_mode(mode, args, dataset, proxy.url, bucket, work)
                line = {**figures, "bandwidth_mb_s": args.bandwidth_mb, "model": f"{args.generator} ngf {args.ngf}",
                        "size": args.size, "steps_per_epoch": args.images, "epochs": args.epochs, **host()}
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
