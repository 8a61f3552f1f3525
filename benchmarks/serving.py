"""`cyclegan serve` (Ray Serve, batched replicas) against `mlflow models serve` of the same model version,
in one run: concurrent clients x image sizes, images/s and latency percentiles.

Registers a freshly initialised generator pair (``--generator``, ``--ngf``; resnet_9blocks ngf 64 is
the CycleGAN of the paper) as version 1 of a model in a throwaway MLflow store (SQLite + a local
artifact folder), then starts both servers on loopback from that registry:

- ``cyclegan serve --model NAME`` with the replica settings given here (its local Ray, one replica by
  default with all this machine's CPUs as torch threads, batches of up to ``--max-batch-size``);
- ``mlflow models serve -m models:/NAME/1 --env-manager local`` (one worker, all CPUs), its backend and
  precision from ``--mlflow-backend`` / ``--mlflow-precision`` (``CYCLEGAN_BACKEND`` / ``CYCLEGAN_PRECISION``;
  ``torch fp32`` is what it served before the fast CPU path).

For each image size and client count, each server gets ``--warmup`` requests, then ``--clients``
threads post MLflow's scoring JSON (one random-noise PNG per request, the same for both servers)
back to back for ``--seconds`` over keep-alive connections. One JSON line per (server, size, clients):
images/s (answered requests over the window), p50/p95/p99 latency in ms, requests, errors (and their
HTTP statuses: ``mlflow models serve`` answers 504 past its 60 s request timeout); then one
``ratio`` line per (size, clients): ``cyclegan serve``'s images/s over MLflow's, and the p99s.

    python benchmarks/serving.py --sizes 256 512 --clients 1 4 16 --seconds 30
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator
from pipelines.clients.embedded import free_port

BIN = Path(sys.executable).parent
MODEL = "bench-serving"


def host() -> dict[str, Any]:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0] if Path(
        "/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }


def register(root: Path, config: ModelConfig) -> str:
    """Version 1 of MODEL (champion) in a SQLite store under ``root``; returns the tracking URI."""
    from mlflow.tracking import MlflowClient

    from pipelines.registry.pyfunc import log_pyfunc
    from pipelines.tracking.session import global_tracking_uri

    torch.manual_seed(0)
    nets = [build_generator(config.generator, ngf=config.ngf, norm=config.norm) for _ in range(2)]
    generators = Translator(nets[0], nets[1], config).save_pretrained(root / "generators")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("bench-serving", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment)
    logged = client.create_logged_model(experiment, name="bench-serving", source_run_id=run.info.run_id)
    model_uri = log_pyfunc(logged.model_id, generators, tracking_uri=uri)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    with global_tracking_uri(uri):  # SQLite's registry resolves a models:/<model_id> source through it
        version = client.create_model_version(MODEL, model_uri, run_id=run.info.run_id,
                                              model_id=model_uri.removeprefix("models:/")).version
    client.set_registered_model_alias(MODEL, "champion", version)
    return uri


@contextmanager
def server(cmd: list[str], env: dict[str, str], log: Path, url: str) -> Iterator[str]:
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited with {process.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield url
    finally:
        process.terminate()  # cyclegan serve: its own process stops its Ray; mlflow: gunicorn/uvicorn stop
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def request_body(size: int) -> bytes:
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encoded]]},
                       "params": {"direction": "AtoB"}}).encode()


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def load(url: str, body: bytes, *, clients: int, seconds: float, warmup: int) -> dict[str, Any]:
    """``clients`` threads posting ``body`` back to back for ``seconds``; latencies of the answers."""
    host_port = url.removeprefix("http://")
    warm = http.client.HTTPConnection(host_port, timeout=600)
    for _ in range(warmup):
        post(warm, body)
    warm.close()
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host_port, timeout=600)
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            status = post(conn, body)
            took = time.perf_counter() - began
            with lock:
                (latencies if status == 200 else errors).append(took if status == 200 else status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start  # the window plus the requests in flight at its end
    ms = np.array(latencies) * 1000
    return {"images_per_s": round(len(latencies) / wall, 3), "requests": len(latencies), "errors": len(errors),
            "error_statuses": sorted(set(errors)),
            "wall_s": round(wall, 1), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None
                                         for q in (50, 95, 99)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="requests per server and size before measuring")
    parser.add_argument("--generator", default="resnet_9blocks")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--backend", default="auto", help="cyclegan serve --backend")
    parser.add_argument("--precision", default="auto", help="cyclegan serve --precision")
    parser.add_argument("--mlflow-backend", default="auto", help="mlflow models serve's CYCLEGAN_BACKEND")
    parser.add_argument("--mlflow-precision", default="auto", help="mlflow models serve's CYCLEGAN_PRECISION")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--replica-cpus", type=float, default=None, help="default: cyclegan serve's (CPUs / replicas)")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=1)
    args = parser.parse_args()

    config = ModelConfig(generator=args.generator, ngf=args.ngf)
    common = {"bench": "serving", "generator": args.generator, "ngf": args.ngf, "backend": args.backend,
              "precision": args.precision, "mlflow_backend": args.mlflow_backend,
              "mlflow_precision": args.mlflow_precision, "max_batch_size": args.max_batch_size,
              "min_replicas": args.min_replicas,
              "max_replicas": args.max_replicas, "replica_cpus": args.replica_cpus}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        root = Path(folder)
        uri = register(root, config)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        env.pop("RAY_ADDRESS", None)
        ours_port, theirs_port = free_port(), free_port()
        ours_cmd = [str(BIN / "cyclegan"), "serve", "--model", MODEL, "--port", str(ours_port),
                    "--backend", args.backend, "--precision", args.precision,
                    "--max-batch-size", str(args.max_batch_size), "--batch-wait-s",
                    str(args.batch_wait_s), "--min-replicas", str(args.min_replicas), "--max-replicas",
                    str(args.max_replicas)]
        if args.replica_cpus is not None:
            ours_cmd += ["--replica-cpus", str(args.replica_cpus)]
        theirs_cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local",
                      "-h", "127.0.0.1", "-p", str(theirs_port)]
        with server(ours_cmd, env, root / "cyclegan-serve.log", f"http://127.0.0.1:{ours_port}") as ours, \
                server(theirs_cmd, {**env, "CYCLEGAN_BACKEND": args.mlflow_backend,
                                    "CYCLEGAN_PRECISION": args.mlflow_precision}, root / "mlflow-serve.log",
                       f"http://127.0.0.1:{theirs_port}") as theirs:
            for size in args.sizes:
                body = request_body(size)
                for clients in args.clients:
                    rows = {}
                    for name, url in (("cyclegan serve", ours), ("mlflow models serve", theirs)):
                        rows[name] = load(url, body, clients=clients, seconds=args.seconds, warmup=args.warmup)
                        print(json.dumps({**common, "server": name, "size": size, "clients": clients, **rows[name],
                                          **host()}), flush=True)
                    ours_row, theirs_row = rows["cyclegan serve"], rows["mlflow models serve"]
                    print(json.dumps({**common, "config": "ratio", "size": size, "clients": clients,
                                      "throughput_ratio":
                                          round(ours_row["images_per_s"] / theirs_row["images_per_s"], 2)
                                          if theirs_row["images_per_s"] else None,
                                      "p99_ms": {"cyclegan serve": ours_row["p99_ms"],
                                                 "mlflow models serve": theirs_row["p99_ms"]}}), flush=True)


if __name__ == "__main__":
    main()
