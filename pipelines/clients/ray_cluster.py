"""The one way the pipeline attaches to Ray, for training and for batch translation alike, and the
AWS credentials each Ray node must hold itself.

Credentials never travel through Ray (runtime_env, task arguments, pickled filesystems): Ray logs and
stores those. Every process finds them in its own node's standard AWS chain (README.md, "Credentials
on a cluster"); ``node_credentials_problem`` says which node lacks them.
"""

from __future__ import annotations

import logging

import botocore.session
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)

CREDENTIALS_DOC = 'README.md, "Credentials on a cluster"'


class NodeCredentialsError(RuntimeError):
    """A Ray node that needs S3 for this run has no AWS credentials."""


def connect_ray(address: str | None, *, local_num_cpus: int | None = None) -> bool:
    """Connect to ``address``'s cluster (``ray://...`` or a GCS ``host:port``), or start a local Ray with
    ``local_num_cpus`` CPUs (None: all); returns True when the cluster is local. An already initialised
    Ray (a test fixture, a notebook) is used as it is."""
    if ray.is_initialized():
        return not address
    # Ray's raw worker output is dropped unless debugging: the pipeline reports progress itself, and
    # worker errors reach the driver as exceptions.
    quiet = not logger.isEnabledFor(logging.DEBUG)
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING)
        return False
    logger.info("starting a local Ray (%s CPUs)", local_num_cpus or "all")
    # address="local": never attach to a cluster that RAY_ADDRESS names behind the caller's back
    ray.init(address="local", num_cpus=local_num_cpus, include_dashboard=False, log_to_driver=not quiet,
             logging_level=logging.WARNING)
    return True


def has_aws_credentials() -> bool:
    """Whether this process's standard AWS chain (environment, shared files, web identity, container or
    instance role) yields credentials; botocore's chain, the one pyarrow's S3 client also walks."""
    return botocore.session.Session().get_credentials() is not None


def missing_credentials_message(uses: list[str], *, process: str, node: str) -> str:
    """The one-line error of a process that needs S3 (``uses``) on a node without credentials."""
    return (f"{process} on Ray node {node} found no AWS credentials for {' and '.join(uses)}: give every "
            "Ray node credentials of its own (instance/pod role, the node's environment or a Kubernetes "
            f"Secret; see {CREDENTIALS_DOC}); the pipeline does not send them through Ray")


def this_node() -> str:
    """This process's Ray node: IP and node ID."""
    return f"{ray.util.get_node_ip_address()} (node ID {ray.get_runtime_context().get_node_id()})"


def node_credentials_problem(uses: list[str], *, process: str) -> str | None:
    """None when this process needs no S3 or its node's chain has credentials, else the error."""
    if not uses or has_aws_credentials():
        return None
    return missing_credentials_message(uses, process=process, node=this_node())


@ray.remote(num_cpus=0)
def _probe_node_credentials(uses: list[str], process: str) -> str | None:
    return node_credentials_problem(uses, process=process)


def node_credentials_problem_on(node_id: str, uses: list[str], *, process: str) -> str | None:
    """``node_credentials_problem`` asked on the Ray node ``node_id`` (its environment is its own), by a
    zero-CPU task there (a few seconds)."""
    node = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return ray.get(_probe_node_credentials.options(scheduling_strategy=node).remote(uses, process))
