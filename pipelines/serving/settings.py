"""What ``cyclegan serve`` serves and how (``ServeSettings``, resolved once at the entry: the CLI or the
application builder of a Serve config / KubeRay RayService), and the Ray Serve options derived from it."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from cyclegan_core.config import StrictModel
from cyclegan_core.inference.backends.interface import BACKENDS, PRECISIONS, check_uncalibrated_choice

# Serve application names: the front (HTTP routes + the rollout watcher) and the model replicas, which
# the watcher redeploys for each version (a separate application, so a switch never restarts the front).
MODEL_APP_SUFFIX = "-model"
MODEL_DEPLOYMENT = "Translator"
SERVED_VERSION_PATH = "/served-version"  # GET: the rollout watcher's record (pipelines.serving.served reads it)


class ServeSettings(StrictModel):
    """The served model, where it listens, how it follows the rollout, and the replicas' resources."""

    model: str = Field(min_length=1, description="registered model")
    alias: str = Field("champion", min_length=1, description="alias whose rollouts it follows")
    tracking_uri: str = Field(min_length=1, description="MLflow tracking and registry URI")
    host: str = Field("127.0.0.1", min_length=1, description="HTTP listen address of Serve's proxy")
    port: int = Field(5001, ge=1, le=65535, description="HTTP listen port of Serve's proxy")
    app_name: str = Field("cyclegan", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                          description="Serve application name (the model replicas' is <app_name>-model)")
    # following the rollout
    poll_s: float = Field(5.0, gt=0, description="seconds between reads of the rollout tag")
    retry_after_s: float = Field(60.0, ge=0, description="seconds before a version that failed to load is tried again")
    start_timeout_s: float = Field(600.0, gt=0, description="how long a version's replicas may take to start")
    # the model replicas
    backend: str = Field("auto", description=f"inference backend: {', '.join(BACKENDS)}")
    precision: str = Field("auto", description="auto: measured on the replica's machine (bf16 on CUDA); "
                                               f"{', '.join(p for p in PRECISIONS[1:] if p != 'int8')}")
    cache_dir: Path | None = Field(None, description="where replicas keep the measured auto decision and converted "
                                                     "OpenVINO models (None: each node's ~/.cache/cyclegan)")
    min_replicas: int = Field(1, ge=1, description="model replicas kept running")
    max_replicas: int = Field(1, ge=1, description="model replicas autoscaling may add up to")
    target_ongoing_requests: float = Field(4.0, gt=0, description="autoscaling aims at this many requests per replica")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs each model replica reserves (and its torch threads)")
    replica_gpus: float = Field(
        0.0, ge=0, description="GPUs each model replica reserves (>0: the replica runs on CUDA)"
    )
    max_batch_size: int = Field(8, ge=1, description="images of one size a replica translates in one batch")
    batch_wait_s: float = Field(0.01, ge=0, description="how long a replica waits to fill a batch")
    memory_budget: int | None = Field(None, ge=1, description="bytes a replica may hold while translating (None: "
                                                             "cyclegan_core.inference.memory.default_budget); "
                                                             "larger images are tiled")
    # the HTTP front
    max_body_bytes: int = Field(64 * 2**20, ge=1, description="request bodies over this are refused (413)")

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})")
        # a server has no images of the model's input domain before its first request
        check_uncalibrated_choice(self.backend, self.precision, lacking="a server does not have")
        if self.backend == "openvino" and self.replica_gpus > 0:
            raise ValueError("backend openvino runs on the CPU; replica_gpus > 0 needs backend torch or auto")
        return self

    @property
    def model_app_name(self) -> str:
        return self.app_name + MODEL_APP_SUFFIX

    @property
    def device(self) -> str:
        return "cuda" if self.replica_gpus > 0 else "cpu"

    @property
    def torch_threads(self) -> int:
        """A CPU replica's intra-op threads: the CPUs it reserves, at least one."""
        return max(1, math.floor(self.replica_cpus))


def model_deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """``Deployment.options`` of the model replicas.

    ``max_surge_percent=100`` makes a version switch start the new replicas before any old one stops: Serve
    routes to a new replica once its constructor (download + load) returned, stops the old ones after,
    and when the new version fails to start ``max_constructor_retry_count`` times the update is marked
    failed while the old replicas keep serving. ``max_ongoing_requests`` leaves room to fill a batch.
    """
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        "max_ongoing_requests": max(2 * settings.max_batch_size, math.ceil(settings.target_ongoing_requests)),
        "max_surge_percent": 100,
        "max_constructor_retry_count": 3,
        "graceful_shutdown_timeout_s": 60,
    }
    if settings.min_replicas == settings.max_replicas:
        options["num_replicas"] = settings.min_replicas
    else:
        options["autoscaling_config"] = {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                                         "initial_replicas": settings.min_replicas,
                                         "target_ongoing_requests": settings.target_ongoing_requests}
    return options


def local_ray_cpus(settings: ServeSettings, host_cpus: int) -> int:
    """Logical CPUs of the local Ray ``cyclegan serve`` starts: the host's, or enough for every model
    replica twice over when that is more (a switch runs the new replicas beside the old ones until they
    answer; Ray's CPUs are scheduling tokens, so the brief overlap shares the cores)."""
    return max(host_cpus, math.ceil(2 * settings.max_replicas * settings.replica_cpus))



def settings_fingerprint(settings: ServeSettings) -> str:
    """What model replicas were deployed with (the watcher redeploys replicas of other settings)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]
