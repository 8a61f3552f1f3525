"""``cyclegan serve``'s process: Ray (a local one, or the cluster of ``RAY_ADDRESS``), Serve's HTTP proxy
on ``host:port``, the application (``app.front_app``), then, until SIGTERM/SIGINT, a log line for each
change of what is served. On a signal it removes what it deployed (and stops the local Ray it started);
``detach`` leaves the application running on the cluster instead and returns."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from pipelines.serving.settings import ServeSettings, local_ray_cpus

log = logging.getLogger(__name__)

STATUS_POLL_S = 1.0


def status_change(previous: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """The log line for a change of the watcher's record (None: nothing new)."""
    if previous is not None and current["state"] == previous["state"] and \
            current["last_failure"] == previous["last_failure"]:
        return None
    failure = current["last_failure"]
    if failure and (previous is None or failure != previous["last_failure"]):
        return f"{current['state']}: {failure['reason']}"
    return current["state"]


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM (a container's stop) or SIGINT (Ctrl-C)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def report_until(stop: threading.Event, status: Callable[[], dict[str, Any]]) -> None:
    """Log each change of what is served until ``stop`` is set."""
    previous: dict[str, Any] | None = None
    while not stop.wait(STATUS_POLL_S if previous is not None else 0):
        try:
            current = status()
        except Exception as exc:  # noqa: BLE001 - the watcher restarting: report, keep waiting
            log.warning("cannot read the served version: %s", exc)
            continue
        line = status_change(previous, current)
        if line:
            (log.error if current["last_failure"] and "failed" in current["state"] else log.info)("%s", line)
        previous = current


def serve_application(settings: ServeSettings, *, ray_address: str | None, detach: bool, host_cpus: int) -> None:
    """Run ``cyclegan serve`` (see the module docstring)."""
    import ray
    from ray import serve

    from pipelines.clients.ray_cluster import connect_ray
    from pipelines.serving.app import WATCHER_DEPLOYMENT, front_app

    local = connect_ray(ray_address, local_num_cpus=local_ray_cpus(settings, host_cpus))
    stop = stop_on_signals()  # after ray.init, which installs a SIGTERM handler of its own in this process
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(front_app(settings), name=settings.app_name, route_prefix="/")
        log.info("serving %s@%s on http://%s:%s (following rollout.%s.version, read every %g s)%s",
                 settings.model, settings.alias, settings.host, settings.port, settings.alias, settings.poll_s,
                 "" if local else f" on the Ray cluster at {ray_address}")
        if detach:
            log.info("detached: applications %s and %s stay on the cluster (`serve shutdown` or `serve status` "
                     "with RAY_ADDRESS to manage them)", settings.app_name, settings.model_app_name)
            return
        watcher = serve.get_deployment_handle(WATCHER_DEPLOYMENT, app_name=settings.app_name)
        report_until(stop, lambda: watcher.status.remote().result(timeout_s=30))
    finally:
        if not detach:
            remove(settings, local=local)
        ray.shutdown()


def remove(settings: ServeSettings, *, local: bool) -> None:
    """Stop what this process deployed: all of Serve on its own local Ray, else its two applications."""
    from ray import serve

    try:
        if local:
            serve.shutdown()
        else:
            for name in (settings.app_name, settings.model_app_name):
                serve.delete(name)
    except Exception as exc:  # noqa: BLE001 - stopping anyway: Ray's shutdown ends the local processes
        log.warning("stopping Serve: %s", exc)
    log.info("model server stopped")
