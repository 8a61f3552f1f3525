"""Benchmark: S3 ingestion (cold and unchanged re-ingest) against ``aws s3 sync`` on the same data.

Starts a moto S3 server in its own process on loopback, uploads N synthetic images
(``cyclegan_core.data.synthetic``, 64 px PNGs) with ``upload_folder``, then times in one run:

- ``ingest_prefix`` cold (empty cache): listing + parallel download + sha256 + decode validation;
  the pre-decoded cache step (``write_decoded_cache``) is timed separately;
- ``ingest_prefix`` again with nothing changed (incremental);
- ``aws s3 sync`` cold and again (incremental), when the AWS CLI is found (``--aws-bin`` or ``PATH``;
  otherwise reported as skipped with the reason). ``aws`` runs with its default settings
  (10 concurrent requests), as a user would run it.

Prints one JSON line with the figures and the ratios. Usage:
    python benchmarks/ingest.py --n 2000 [--workers 16] [--aws-bin /tmp/awscli-venv/bin/aws]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cyclegan_core.data.synthetic import make_synthetic_dataset
from pipelines.clients.embedded import free_port
from pipelines.clients.s3 import list_objects, make_s3_client
from pipelines.ingest import ingest_prefix, upload_folder

BUCKET = "bench"
PREFIX = "datasets/synth"


def start_moto(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise TimeoutError("moto server did not start within 60 s")


def find_aws(explicit: str | None) -> tuple[str | None, str]:
    """The aws executable and its version, or (None, why it is skipped)."""
    candidate = explicit or shutil.which("aws")
    if not candidate:
        return None, "aws CLI not found on PATH (pass --aws-bin)"
    try:
        version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{candidate} does not run: {exc}"
    return candidate, (version.stdout or version.stderr).strip()


def time_aws_sync(aws: str, endpoint: str, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run([aws, "s3", "sync", f"s3://{BUCKET}/{PREFIX}", str(dest), "--endpoint-url", endpoint,
                    "--only-show-errors"], check=True, timeout=1800, env=os.environ.copy())
    return time.perf_counter() - start


def synth_counts(n: int) -> tuple[int, int]:
    """(n_train, n_test) so that 2 train + 3 test splits hold about n images (test = 5% of train)."""
    n_test = max(1, n // 30)
    return max(1, (n - 3 * n_test) // 2), n_test


def run(n: int, workers: int, load_size: int, aws_bin: str | None, work: Path) -> dict[str, Any]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    server = start_moto(port)
    try:
        n_train, n_test = synth_counts(n)
        source = make_synthetic_dataset(work / "source", size=64, n_train=n_train, n_test=n_test, seed=0)
        client = make_s3_client(endpoint_url=endpoint, max_pool_connections=workers)
        client.create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/{PREFIX}"
        upload = upload_folder(source, uri, max_workers=workers, client=client)
        import cyclegan_core.data.cache  # noqa: F401  (torch import kept out of the timed cache step)

        start = time.perf_counter()
        list_objects(client, BUCKET, PREFIX + "/")  # the floor of any incremental sync: one full listing
        list_s = time.perf_counter() - start

        start = time.perf_counter()
        cold = ingest_prefix(uri, work / "cache", load_size=load_size, max_workers=workers, client=client)
        cold_wall = time.perf_counter() - start
        start = time.perf_counter()
        warm = ingest_prefix(uri, work / "cache", load_size=load_size, max_workers=workers, client=client)
        warm_wall = time.perf_counter() - start
        assert warm.downloaded == 0 and warm.version == cold.version, "unchanged re-ingest downloaded data"

        result: dict[str, Any] = {
            "benchmark": "ingest", "objects": upload.files, "images": sum(cold.counts.values()),
            "bytes": upload.bytes_uploaded, "workers": workers, "load_size": load_size,
            "upload_s": upload.seconds,
            "ingest_cold_s": cold.seconds, "ingest_cold_mb_per_s": cold.mb_per_s,
            "decoded_cache_s": cold.cache_seconds, "ingest_cold_total_s": round(cold_wall, 3),
            "list_s": round(list_s, 3), "ingest_incremental_s": round(warm_wall, 3),
            "incremental_over_cold": round(warm_wall / cold.seconds, 4),
        }
        aws, aws_info = find_aws(aws_bin)
        if aws is None:
            result.update(aws_sync="skipped", aws_skipped_reason=aws_info)
            return result
        aws_cold = time_aws_sync(aws, endpoint, work / "aws")
        aws_warm = time_aws_sync(aws, endpoint, work / "aws")
        result.update(
            aws_version=aws_info, aws_sync_cold_s=round(aws_cold, 3), aws_sync_incremental_s=round(aws_warm, 3),
            ingest_cold_over_aws_cold=round(cold.seconds / aws_cold, 3),
            ingest_incremental_over_aws_incremental=round(warm_wall / aws_warm, 3),
        )
        return result
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images to upload (about)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--load-size", type=int, default=64, help="side of the pre-decoded cache")
    parser.add_argument("--aws-bin", default=None, help="aws executable (default: the one on PATH)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        result = run(args.n, args.workers, args.load_size, args.aws_bin, Path(tmp))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
