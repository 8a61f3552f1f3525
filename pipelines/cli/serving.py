"""``cyclegan serve``: the registered model on Ray Serve, its served version following the rollout
(``pipelines.serving``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from pydantic import ValidationError

from pipelines.cli.app import app, fail, refuse, services
from pipelines.config import cache_dir_from_env


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="registered model to serve")],
    alias: Annotated[
        str, typer.Option(help="alias whose rollouts it follows (tag rollout.<alias>.version)")
    ] = "champion",
    host: Annotated[
        str, typer.Option(help="listen address (0.0.0.0: every interface; Serve asks for no credentials)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 5001,
    detach: Annotated[
        bool, typer.Option(help="with RAY_ADDRESS: deploy, leave it running on the cluster, exit")
    ] = False,
    poll_s: Annotated[float, typer.Option("--poll-s", help="seconds between reads of the rollout tag")] = 5.0,
    retry_after_s: Annotated[
        float, typer.Option("--retry-after-s", help="seconds before a version that failed to load is tried again")
    ] = 60.0,
    start_timeout_s: Annotated[
        float, typer.Option("--start-timeout-s", help="how long a version's replicas may take to start")
    ] = 600.0,
    backend: Annotated[
        str,
        typer.Option(
            help="inference backend of the replicas: auto (measured on the replica's machine), torch, openvino (CPU)"
        ),
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="auto (measured; bf16 on CUDA), fp32 (--backend torch --precision fp32: "
            "the official computation), bf16, fp16 (torch)"
        ),
    ] = "auto",
    min_replicas: Annotated[int, typer.Option(help="model replicas kept running")] = 1,
    max_replicas: Annotated[int, typer.Option(help="model replicas autoscaling may add up to")] = 1,
    target_ongoing_requests: Annotated[
        float, typer.Option(help="autoscaling aims at this many requests per replica")
    ] = 4.0,
    replica_cpus: Annotated[
        float | None,
        typer.Option(
            help="CPUs (and torch threads) per model replica; default: this "
            "machine's CPUs / --max-replicas locally, 1 on a cluster"
        ),
    ] = None,
    replica_gpus: Annotated[float, typer.Option(help="GPUs per model replica (> 0: the replicas run on CUDA)")] = 0.0,
    max_batch_size: Annotated[int, typer.Option(help="images of one size a replica translates together")] = 8,
    batch_wait_s: Annotated[
        float, typer.Option("--batch-wait-s", help="how long a replica waits to fill a batch")
    ] = 0.01,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="memory a replica may use per batch, e.g. 4GiB (larger images "
            "are tiled); default: half the available memory"
        ),
    ] = None,
    max_body_size: Annotated[str, typer.Option(help="larger request bodies are refused with 413")] = "64MiB",
) -> None:
    """Serve MODEL on Ray Serve: POST /invocations (MLflow's scoring JSON), POST /translate (image bytes in,
    PNG out), /ping, /health, /version; GET /served-version says which version serves. The served version
    follows the rollout; a switch starts the new replicas before the old ones stop. Without RAY_ADDRESS it
    starts a local Ray; SIGTERM or Ctrl-C stops everything it started."""

    from cyclegan_core.inference.memory import parse_bytes
    from pipelines.serving.server import serve_application
    from pipelines.serving.settings import ServeSettings
    from pipelines.tracking.session import RegistryError, check_reachable

    found = services()
    if detach and not found.ray_address:
        refuse("--detach leaves the application on a Ray cluster: set RAY_ADDRESS (without it the local Ray "
               "this command starts stops with it)")
    host_cpus = os.cpu_count() or 1
    if replica_cpus is None:
        replica_cpus = 1.0 if found.ray_address else float(max(1, host_cpus // max_replicas))
    try:
        settings = ServeSettings(
            model=model, alias=alias, tracking_uri=found.tracking_uri, host=host, port=port, poll_s=poll_s,
            retry_after_s=retry_after_s, start_timeout_s=start_timeout_s, backend=backend, precision=precision,
            min_replicas=min_replicas, max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
            replica_cpus=replica_cpus, replica_gpus=replica_gpus, max_batch_size=max_batch_size,
            batch_wait_s=batch_wait_s, memory_budget=None if memory_budget is None else parse_bytes(memory_budget),
            max_body_bytes=parse_bytes(max_body_size), cache_dir=cache_dir_from_env(os.environ))
    except (ValidationError, ValueError) as exc:
        refuse(" ".join(str(exc).split()))
    try:
        check_reachable(found.tracking_uri)
    except RegistryError as exc:
        fail(str(exc))
    serve_application(settings, ray_address=found.ray_address, detach=detach, host_cpus=host_cpus)
