"""``cyclegan serve``: the project's model server, whose served version follows the rollout
(``pipelines.serving``)."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli.app import app, fail, refuse, services


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="registered model to serve")],
    alias: Annotated[str, typer.Option(help="alias whose rollouts it follows (tag rollout.<alias>.version)")] = "champion",
    host: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 5001,
    poll_s: Annotated[float, typer.Option("--poll-s", help="seconds between reads of the rollout tag")] = 5.0,
    start_timeout_s: Annotated[float, typer.Option("--start-timeout-s", help="how long a version's scoring "
                                                                             "server may take to start")] = 300.0,
    retry_after_s: Annotated[float, typer.Option("--retry-after-s", help="seconds before a version that failed "
                                                                         "to start is tried again")] = 60.0,
    workers: Annotated[int, typer.Option(help="workers of each `mlflow models serve`")] = 1,
) -> None:
    """Serve MODEL with MLflow's scoring server (POST /invocations, /ping, /health, /version) behind a front
    that switches to each version the rollout records; GET /served-version says which is served."""
    from pydantic import ValidationError

    from pipelines.registry.session import RegistryError, check_reachable
    from pipelines.serving.server import ServeSettings
    from pipelines.serving.server import serve as run_server

    tracking_uri = services().tracking_uri
    try:
        settings = ServeSettings(model=model, alias=alias, host=host, port=port, tracking_uri=tracking_uri,
                                 poll_s=poll_s, start_timeout_s=start_timeout_s, retry_after_s=retry_after_s,
                                 workers=workers)
    except ValidationError as exc:
        refuse(" ".join(str(exc).split()))
    try:
        check_reachable(tracking_uri)
    except RegistryError as exc:
        fail(str(exc))
    run_server(settings)
