"""Shared fixtures: real local services started by the tests themselves (never mocks).

- ``s3_server``: moto's standalone S3-compatible HTTP server on a free loopback port; boto3 reaches it
  through ``AWS_ENDPOINT_URL`` exactly as it would reach MinIO or AWS.
- ``mlflow_server``: a real ``mlflow server`` process (SQLite backend, local artifacts).
- ``ray_local``: one local Ray cluster with 2 CPUs for the whole session.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from pipelines.clients.embedded import free_port

# Ray Train's controller polls its workers every 2 s by default; the suite's runs have epochs of a second,
# and their reports and state changes wait for the poll (test_train_damage, 3 runs: 80 s, 64 s at 0.5 s).
# Every Ray process the suite starts (in-process, `ray start`, the CLI's local Ray) inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# The `mlflow server`s of the suite run without MLflow 3's job execution: seven Huey consumer processes per
# server (about 25 s of CPU to start) for GenAI jobs the pipeline never submits (webhooks do not use them).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


def wait_http(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (OSError, http.client.HTTPException):
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def drain_prefect_queues(timeout_s: float = 60) -> None:
    """Send what Prefect's process-wide log and event workers still hold, then drop them. They are
    singletons bound to the API they started with: left bound to a test's own server, the next
    ``prefect_test_harness`` in the process inherits them, and its teardown waits a request timeout
    per queued item once that server is gone (10 minutes of a CI run). Call it before the server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


@pytest.fixture(scope="session", autouse=True)
def backend_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's folder for measured ``auto`` decisions and converted OpenVINO models, never the user's
    ~/.cache: each architecture is probed once per session. Commands the tests run get it as
    CYCLEGAN_CACHE_DIR, library calls without a cache_dir through the patched default."""
    folder = tmp_path_factory.mktemp("backend-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CYCLEGAN_CACHE_DIR", str(folder))
        patch.setattr("cyclegan_core.inference.backends.loading.default_cache_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on loopback (the demo's embedded one); AWS_* variables point
    boto3 at it for the session."""
    from pipelines.clients.embedded import embedded_s3

    with embedded_s3() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{free_port()}"
    name = "".join(c for c in name if c.isalnum() or c == "-")[:63]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tracking URI of a real `mlflow server` process (SQLite backend, local artifact root)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # Webhooks to a receiver on loopback over plain HTTP (tests/e2e/test_promotion.py), the secret
    # encrypted with a fixed key, the webhook list re-read within a second, and a delivery to a receiver
    # that is down dropped at once (a production server retries 3 times over ~10 s).
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "bWxmbG93LXRlc3Qtd2ViaG9vay1lbmNyeXB0aW9uLWs=",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0"}
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout_s=300, process=process)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def ray_local(s3_server: str) -> Iterator[None]:
    """One local Ray cluster (2 CPUs) shared by the session's Ray tests. Started inside ``s3_server``'s
    environment: its processes inherit the AWS variables, as a local Ray started by a driver does (the
    pipeline never sends credentials through Ray)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic domain pair (32 px, 24 train / 6 test images per domain)."""
    from cyclegan_core.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(root / "synth", size=32, n_train=24, n_test=6, seed=0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(Path("mlartifacts-test"), ignore_errors=True)


def _stop_process_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the process group of ``process`` (started with ``start_new_session=True``), waiting at most
    ``timeout_s``; then SIGKILL it. A process that already ended is left alone."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def clean_ray_env(home: Path) -> dict[str, str]:
    """This process's environment without Ray settings, with a private HOME (no stray ~/.ray token)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in RAY_AUTH_VARIABLES}
    return env | {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}


def _start_ray_node(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group; returns once the node reports it started."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise RuntimeError(f"`{' '.join(cmd[1:3])}` exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            _stop_process_group(process, timeout_s=5)
            raise TimeoutError(f"the Ray node did not start within 180 s:\n{log_path.read_text()}")
        time.sleep(0.5)
    return process


class RayCluster(NamedTuple):
    env: dict[str, str]  # what a driver needs: RAY_ADDRESS (the GCS), RAY_AUTH_*, a private HOME
    client_address: str  # ray://127.0.0.1:<port> of the head's Ray Client server
    logs: Path  # the head's session logs

    def client_server_logs(self, tail: int = 40) -> str:
        """The last lines of the head's Ray Client server logs (proxy and per-client servers), for a failure's
        message: Ray Client reports a server-side failure as one line, the reason is in these files."""
        parts = []
        for path in sorted(self.logs.glob("ray_client_server*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            if lines:
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts) or f"(no Ray Client server logs in {self.logs})"


CLIENT_PROBE = "import ray, sys; ray.init(address=sys.argv[1]); print(ray.cluster_resources()['CPU'])"


def _check_client_server(cluster: RayCluster, attempts: int = 3) -> None:
    """Connect through the head's Ray Client server once, so a test starts on a cluster that serves ray://
    sessions. A failed attempt is reported as a warning with the server's logs; after ``attempts`` of them
    the cluster is unusable and the fixture fails with those logs."""
    env = cluster.env | {"RAY_ADDRESS": cluster.client_address}
    for attempt in range(1, attempts + 1):
        probe = subprocess.run([sys.executable, "-c", CLIENT_PROBE, cluster.client_address], env=env,
                               capture_output=True, text=True, timeout=180, check=False)
        if probe.returncode == 0:
            return
        report = (f"Ray Client session {attempt}/{attempts} failed:\n{probe.stderr[-2000:]}\n"
                  f"{cluster.client_server_logs()}")
        if attempt == attempts:
            raise RuntimeError(report)
        warnings.warn(report, stacklevel=2)


@contextmanager
def ray_cluster(home: Path, *, cpus_per_node: int, nodes: int = 1,
                without: tuple[str, ...] = ()) -> Iterator[RayCluster]:
    """A real Ray cluster from `ray start --head` (with a Ray Client server) plus ``nodes - 1``
    `ray start --address` nodes on this machine, token authentication as in infra/. The nodes (and
    ``RayCluster.env``) lack the variables named in ``without`` (e.g. a node without AWS credentials).

    Ray 2.60 turns token authentication on wherever ~/.ray/auth_token exists, so the nodes and their
    drivers get an explicit token and a private HOME. Each node runs in its own process group and is
    stopped through it: `ray stop` would also stop the in-process cluster of the `ray_local` fixture.
    """
    import secrets

    port, client_port = free_port(), free_port()
    temp_dir = Path("/tmp") / f"ray-head-{port}"  # short: Ray's unix socket paths must stay < 108 chars
    env = {k: v for k, v in clean_ray_env(home).items() if k not in without}
    # GRPC_ENABLE_FORK_SUPPORT as infra/ sets it on Ray heads (ray-project/ray#63202: the Ray Client server's
    # per-session servers, forked from a gRPC process, crash in gRPC's fork handlers now and then)
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "GRPC_ENABLE_FORK_SUPPORT": "false"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    common = ["--block", f"--num-cpus={cpus_per_node}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
              "--disable-usage-stats"]
    processes: list[subprocess.Popen] = []
    try:
        processes.append(_start_ray_node(
            [ray_bin, "start", "--head", f"--port={port}", f"--ray-client-server-port={client_port}",
             "--include-dashboard=false", f"--temp-dir={temp_dir}", *common], env, home / "ray-head.log"))
        for index in range(1, nodes):
            processes.append(_start_ray_node([ray_bin, "start", f"--address=127.0.0.1:{port}", *common], env,
                                             home / f"ray-node-{index}.log"))
        cluster = RayCluster(env | {"RAY_ADDRESS": f"127.0.0.1:{port}"}, f"ray://127.0.0.1:{client_port}",
                             temp_dir / "session_latest" / "logs")
        _check_client_server(cluster)
        yield cluster
    finally:
        for process in reversed(processes):
            _stop_process_group(process, timeout_s=5)  # Ray drains for up to 30 s on SIGTERM; nothing to drain
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node Ray cluster from `ray start --head` with 2 CPUs (see ``ray_cluster``): the environment a
    driver needs (RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN, a private HOME).
    Started inside ``s3_server``'s environment, so its node has S3 credentials of its own, as the compose
    Ray nodes do (batch translation actors read and write S3 on the nodes)."""
    with ray_cluster(tmp_path_factory.mktemp("ray-home"), cpus_per_node=2) as cluster:
        yield cluster.env


@pytest.fixture()
def ray_two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A two-node Ray cluster on this machine, 1 CPU per node: two Ray Train workers of 1 CPU each must
    run on different nodes (see ``ray_cluster``)."""
    with ray_cluster(tmp_path_factory.mktemp("ray-home"), cpus_per_node=1, nodes=2) as cluster:
        yield cluster
