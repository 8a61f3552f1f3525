"""The Ray cluster a run trains on: connect (``config.services.ray_address`` or a local Ray), check
that it can run the configuration, count the nodes a worker group spans, the workers' runtime env.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from cyclegan_core.distributed import all_gather_object
from pipelines.config import ResolvedConfig

logger = logging.getLogger(__name__)

# AWS credential variables passed on from the driver's environment: to the workers (a worker that must
# ingest the dataset itself authenticates like the driver) and into the pyarrow filesystem Ray Train's
# controller writes checkpoint snapshots with (its process does not inherit the driver's environment).
FORWARDED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

def connect_ray(config: ResolvedConfig) -> bool:
    """Connect to ``config.services.ray_address``'s cluster, or start a local one; returns True when the
    cluster is local. An already initialised Ray (a test fixture, a notebook) is used as it is."""
    address = config.services.ray_address
    if ray.is_initialized():
        return not address
    # Ray's raw worker output is dropped unless debugging: progress is reported by pipelines.train, and
    # worker errors reach the driver as exceptions.
    quiet = not logger.isEnabledFor(logging.DEBUG)
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING)
        return False
    logger.info("starting a local Ray (%s CPUs)", config.scaling.local_num_cpus or "all")
    # address="local": never attach to a cluster that RAY_ADDRESS names behind the config's back
    ray.init(address="local", num_cpus=config.scaling.local_num_cpus, include_dashboard=False,
             log_to_driver=not quiet, logging_level=logging.WARNING)
    return True


def check_storage_shared(storage_path: str, alive_nodes: int) -> None:
    """Refuse a local ``storage_path`` on a multi-node cluster: workers on other nodes could not write
    checkpoints where the driver (and a resumed run) reads them."""
    if alive_nodes > 1 and not storage_path.startswith("s3://"):
        raise ValueError(
            f"run.storage_path {storage_path} is local but the Ray cluster has {alive_nodes} nodes; "
            "use s3://bucket/prefix shared storage so every node writes checkpoints to the same place"
        )


def check_cluster(config: ResolvedConfig, *, local: bool) -> None:
    """Fail fast (instead of waiting forever for resources) on what the cluster cannot run."""
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_storage_shared(config.run.storage_path, alive)
    if not local:
        return  # an autoscaling cluster may add nodes; Ray Train waits for them
    resources = ray.cluster_resources()
    scaling = config.scaling
    need_cpu = scaling.num_workers * scaling.cpus_per_worker
    if resources.get("CPU", 0) < need_cpu:
        raise ValueError(
            f"scaling asks for {scaling.num_workers} workers x {scaling.cpus_per_worker} CPU = {need_cpu} CPUs "
            f"but the local Ray has {resources.get('CPU', 0):g}; lower scaling.num_workers or "
            "scaling.cpus_per_worker, or raise scaling.local_num_cpus"
        )
    if scaling.use_gpu and resources.get("GPU", 0) < scaling.num_workers:
        raise ValueError(
            f"scaling.use_gpu with {scaling.num_workers} workers needs {scaling.num_workers} GPUs "
            f"but the local Ray has {resources.get('GPU', 0):g}"
        )


def count_nodes() -> int:
    """How many Ray nodes the worker group runs on (by node ID: nodes that share an IP count apart).
    A collective: every worker calls it."""
    return len(set(all_gather_object(ray.get_runtime_context().get_node_id())))


def aws_credentials() -> dict[str, str]:
    """The driver's ``FORWARDED_ENV`` variables that are set."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def worker_runtime_env(credentials: dict[str, str]) -> dict[str, Any] | None:
    """The workers' runtime env: the driver's AWS credential variables (``aws_credentials()``)."""
    return {"env_vars": dict(credentials)} if credentials else None
