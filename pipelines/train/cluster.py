"""The Ray cluster a run trains on: connect (``config.services.ray_address`` or a local Ray), check
that it can run the configuration (resources, shared storage, S3 credentials on the nodes that need
them: ``pipelines.clients.ray_cluster``), count the nodes a worker group spans.
"""

from __future__ import annotations

import logging

import ray

from cyclegan_core.training.distributed import all_gather_object
from pipelines.clients import ray_cluster
from pipelines.clients.ray_cluster import NodeCredentialsError, node_credentials_problem
from pipelines.config import ResolvedConfig

logger = logging.getLogger(__name__)


def connect_ray(config: ResolvedConfig) -> bool:
    """``pipelines.clients.ray_cluster.connect_ray`` with the run's address and local CPU count."""
    return ray_cluster.connect_ray(config.services.ray_address, local_num_cpus=config.scaling.local_num_cpus)


def check_storage_shared(storage_path: str, alive_nodes: int) -> None:
    """Refuse a local ``storage_path`` on a multi-node cluster: workers on other nodes could not write
    checkpoints where the driver (and a resumed run) reads them."""
    if alive_nodes > 1 and not storage_path.startswith("s3://"):
        raise ValueError(
            f"run.storage_path {storage_path} is local but the Ray cluster has {alive_nodes} nodes; "
            "use s3://bucket/prefix shared storage so every node writes checkpoints to the same place"
        )


def check_cluster(config: ResolvedConfig, *, local: bool) -> None:
    """Fail fast (instead of waiting forever for resources or failing mid-run) on what the cluster
    cannot run."""
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_storage_shared(config.run.storage_path, alive)
    check_controller_credentials(config, local=local)
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


def s3_uses(config: ResolvedConfig, *, ingests: bool) -> list[str]:
    """What a process of the run reads or writes on S3: the checkpoint storage, the dataset it ingests."""
    uses = [f"run.storage_path {config.run.storage_path}"] if config.run.storage_path.startswith("s3://") else []
    if ingests:
        uses.append(f"ingesting {config.dataset_uri} (no dataset cache on this node)")
    return uses


def require_node_credentials(config: ResolvedConfig, *, ingests: bool, process: str) -> None:
    """Raise NodeCredentialsError (one line) when this process needs S3 and its node has no credentials."""
    problem = node_credentials_problem(s3_uses(config, ingests=ingests), process=process)
    if problem:
        raise NodeCredentialsError(problem)


def check_controller_credentials(config: ResolvedConfig, *, local: bool) -> None:
    """Ray Train's controller runs on the driver's Ray node and writes its run state to
    ``run.storage_path``: with S3 storage, check that node's credentials. A local Ray's processes
    inherit this driver's environment, so the check runs here; on a cluster (Ray Client included) the
    node's environment is its own, so a zero-CPU task on that node checks it (a few seconds, once)."""
    uses = s3_uses(config, ingests=False)
    if not uses:
        return
    process = "Ray Train's controller"
    if local:
        problem = node_credentials_problem(uses, process=process)
    else:
        problem = ray_cluster.node_credentials_problem_on(ray.get_runtime_context().get_node_id(), uses,
                                                          process=process)
    if problem:
        raise NodeCredentialsError(problem)
