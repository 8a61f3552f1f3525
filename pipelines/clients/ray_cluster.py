"""The one way the pipeline attaches to Ray, for training and for batch translation alike."""

from __future__ import annotations

import logging

import ray

logger = logging.getLogger(__name__)


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
