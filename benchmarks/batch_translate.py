"""Batch translation over Ray Data (``pipelines.batch.translate_batch``) against the bare translator, in one run,
before and after the fast CPU backend: ``--backend torch --precision fp32`` (the job's path before it) and
the default ``auto`` (the measured choice on this host, OpenVINO bf16 on an AVX512-BF16 CPU).

Starts a moto S3 server on loopback and a local Ray with ``--ray-cpus`` CPUs, uploads N synthetic PNGs
(seeded noise, ``--size`` px) and an exported, freshly initialised generator pair, then times:

- ``bare_1t`` / ``bare_2t``: ``Translator.__call__`` (torch fp32) in this process (1 / 2 torch threads) on
  the same images, decoded from bytes in memory with ``decode_image`` and encoded to PNG: the work
  without S3, Ray or the job around it;
- ``ray_1a_<backend>`` / ``ray_2a_<backend>``: the whole job (listing, the actor pool of 1 / 2 CPU
  actors of 1 CPU and 1 thread each, S3 reads and writes with metadata, ledgers, manifest) into a fresh
  output prefix, for each of ``--backends`` (``torch-fp32``, ``auto``). ``auto`` is measured once, before
  the timed runs, into a fresh ``CYCLEGAN_CACHE_DIR`` (``auto_warmup_s``): what a node's first job pays
  once, not per run; an untimed job of two batches starts Ray Data and its workers first, so the first
  timed configuration does not pay the cluster's own start-up.

One JSON line per configuration: wall seconds, images/s, for the Ray ones the seconds to the first
finished batch (actor start and model load) and the steady rate after it; ``ray_1a_torch-fp32`` gets
``overhead_ms_per_image`` against ``bare_1t`` (the same work on one thread: whole job minus bare,
divided by N, fixed costs included) and ``steady_overhead_ms_per_image`` (per image once the actor
runs: S3, ledgers, Ray Data); ``ray_2a_*`` gets ``speedup_vs_1a`` and each ``auto`` row
``speedup_vs_torch_fp32`` (same actors, same run). The Prefect flow adds a constant per run (its API
calls and artifacts), not per image; it is not timed here.

    python benchmarks/batch_translate.py --n 64 --size 128 --ngf 32
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.images import decode_image
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator

BUCKET = "bench-batch"


def host() -> dict[str, Any]:
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__}


def synthetic_pngs(n: int, size: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = {}
    for index in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images[f"img{index:04d}.png"] = buffer.getvalue()
    return images


def bare(model_dir: Path, images: dict[str, bytes], *, threads: int, batch_size: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    translator = Translator.from_pretrained(model_dir, device="cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        names = list(images)
        for start in range(0, len(names), batch_size):
            decoded = []
            for name in names[start:start + batch_size]:
                path = Path(folder) / name
                path.write_bytes(images[name])
                decoded.append(decode_image(path))
            for output in translator(decoded, batch_size=batch_size):
                output.save(io.BytesIO(), format="PNG")
    wall = time.perf_counter() - started
    return {"config": f"bare_{threads}t", "wall_s": round(wall, 2), "images_per_s": round(len(images) / wall, 2)}


BACKENDS = {"torch-fp32": ("torch", "fp32"), "auto": ("auto", "auto")}


def on_ray(settings_of: Any, actors: int, backend: str) -> dict[str, Any]:
    from pipelines.batch import translate_batch

    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = translate_batch(settings_of(actors, *BACKENDS[backend]),
                             on_batch=lambda p: marks.append((time.perf_counter(), p.done)))
    wall = time.perf_counter() - started
    first_s, first_done = marks[0][0] - started, marks[0][1]
    steady = (result.translated - first_done) / max(marks[-1][0] - marks[0][0], 1e-9) if len(marks) > 1 else 0.0
    return {"config": f"ray_{actors}a_{backend}", "wall_s": round(wall, 2),
            "images_per_s": round(result.translated / wall, 2), "first_batch_s": round(first_s, 2),
            "steady_images_per_s": round(steady, 2), "translated": result.translated}


def warm_auto(model_dir: Path, cache: Path) -> float:
    """Measure auto at one thread (a CPU actor's) into ``cache``, as a node's first job does once."""
    from cyclegan_core.inference.backends import load_translator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    load_translator(model_dir, device="cpu", cache_dir=cache)
    torch.set_num_threads(threads)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    args = parser.parse_args()

    import boto3
    import ray

    from cyclegan_core.inference.files import TranslateOptions
    from pipelines.batch import batch_settings
    from pipelines.clients.embedded import embedded_s3

    cfg = ModelConfig(generator=args.generator, ngf=args.ngf)
    images = synthetic_pngs(args.n, args.size)
    with tempfile.TemporaryDirectory() as folder, embedded_s3():
        torch.manual_seed(0)
        nets = [build_generator(cfg.generator, ngf=cfg.ngf, norm=cfg.norm) for _ in range(2)]
        model_dir = Translator(nets[0], nets[1], cfg).save_pretrained(Path(folder) / "model")
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for index, (name, data) in enumerate(images.items()):
            client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=data)
            if index < 2 * args.batch_size:  # the warm-up job's inputs
                client.put_object(Bucket=BUCKET, Key=f"warm/{name}", Body=data)
        cache = Path(folder) / "cache"
        os.environ["CYCLEGAN_CACHE_DIR"] = str(cache)  # read by batch_settings, the job's entry
        common = {"n": args.n, "size": args.size, "generator": args.generator, "ngf": args.ngf,
                  "batch_size": args.batch_size, "ray_cpus": args.ray_cpus}
        if "auto" in args.backends:
            common["auto_warmup_s"] = warm_auto(model_dir, cache)
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)

        def settings_of(actors: int, backend: str, precision: str, source: str = "in") -> Any:
            return batch_settings(f"s3://{BUCKET}/{source}", f"s3://{BUCKET}/out-{actors}-{time.time_ns()}",
                                  str(model_dir), env=os.environ,
                                  options=TranslateOptions(batch_size=args.batch_size, actors=actors, backend=backend,
                                                           precision=precision))

        from pipelines.batch import translate_batch

        translate_batch(settings_of(2, "torch", "fp32", source="warm"))  # Ray's own start-up, timed by no row

        runs = [lambda: bare(model_dir, images, threads=1, batch_size=args.batch_size),
                lambda: bare(model_dir, images, threads=2, batch_size=args.batch_size)]
        runs += [lambda actors=actors, backend=backend: on_ray(settings_of, actors, backend)
                 for actors in (1, 2) for backend in args.backends]
        rows = {}
        for run in runs:
            load_before = round(os.getloadavg()[0], 2)
            row = run()
            rows[row["config"]] = row | {"load_avg_1m_before": load_before}
        reference = rows["bare_1t"]  # the same work on one thread, side by side
        for backend in args.backends:
            one_actor, two_actors = rows[f"ray_1a_{backend}"], rows[f"ray_2a_{backend}"]
            two_actors["speedup_vs_1a"] = round(two_actors["images_per_s"] / one_actor["images_per_s"], 2)
            if backend == "torch-fp32":
                one_actor["overhead_ms_per_image"] = round(
                    1000 * (one_actor["wall_s"] - reference["wall_s"]) / args.n, 1
                )
                if one_actor["steady_images_per_s"]:
                    one_actor["steady_overhead_ms_per_image"] = round(
                        1000 / one_actor["steady_images_per_s"] - 1000 / reference["images_per_s"], 1)
            elif "torch-fp32" in args.backends:
                for actors in (1, 2):
                    row, before = rows[f"ray_{actors}a_{backend}"], rows[f"ray_{actors}a_torch-fp32"]
                    row["speedup_vs_torch_fp32"] = round(row["images_per_s"] / before["images_per_s"], 2)
                    if before["steady_images_per_s"]:
                        row["steady_speedup_vs_torch_fp32"] = round(
                            row["steady_images_per_s"] / before["steady_images_per_s"], 2)
        for row in rows.values():
            print(json.dumps({**row, **common, **host()}), flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
