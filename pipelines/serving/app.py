"""The Serve application of ``cyclegan serve``: the HTTP front (``front.Front``, the ingress) and the
rollout watcher (``watcher.RolloutWatcher``), which deploys the model replicas (``model.model_app``) as a
second application, ``<app_name>-model``, for each version it switches to.

``build_app`` is the application builder of Serve config files and KubeRay RayService's
``serveConfigV2`` (``import_path: pipelines.serving.app:build_app``, ``args``: ``ServeSettings`` fields);
``cyclegan serve`` calls ``front_app`` with the settings it resolved.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from pipelines.config import cache_dir_from_env, services_from_env
from pipelines.serving.settings import ServeSettings

FRONT_DEPLOYMENT = "Front"
WATCHER_DEPLOYMENT = "RolloutWatcher"
# The front parses and encodes while the model replicas translate: it admits enough requests at once
# for the replicas' batches to fill. Neither it nor the watcher reserves a CPU (as Serve's own proxy).
FRONT_MAX_ONGOING_REQUESTS = 256


def front_app(settings: ServeSettings) -> serve.Application:
    from pipelines.serving.front import Front
    from pipelines.serving.watcher import RolloutWatcher

    watcher = serve.deployment(name=WATCHER_DEPLOYMENT, num_replicas=1, max_ongoing_requests=100,
                               ray_actor_options={"num_cpus": 0})(RolloutWatcher)
    front = serve.deployment(name=FRONT_DEPLOYMENT, num_replicas=1, max_ongoing_requests=FRONT_MAX_ONGOING_REQUESTS,
                             ray_actor_options={"num_cpus": 0})(Front)
    return front.bind(settings, watcher.bind(settings))


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application from a Serve config's ``args`` (validated as ``ServeSettings``). This is an entry
    point: an ``args`` without ``tracking_uri`` takes ``MLFLOW_TRACKING_URI`` of the environment it is
    built in (a RayService's pods get it from the ConfigMap), and one without ``cache_dir`` takes
    ``CYCLEGAN_CACHE_DIR``."""
    defaults = {"tracking_uri": services_from_env(os.environ).tracking_uri, "cache_dir": cache_dir_from_env(os.environ)}
    settings = ServeSettings.model_validate({**defaults, **args})
    return front_app(settings)
