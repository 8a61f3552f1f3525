"""``cyclegan webhook setup`` and ``cyclegan receiver``: the promotion path (``pipelines.promotion``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from pipelines.cli.app import ExitCode, app, fail, print_json, refuse, services

webhook_app = typer.Typer(help="The MLflow webhook that turns alias moves into rollouts.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("setup")
def webhook_setup(
    url: Annotated[str, typer.Option(help="the receiver's URL as the MLflow server reaches it, "
                                          "e.g. http://promotion-receiver:8091/mlflow-webhook")],
    name: Annotated[str, typer.Option(help="webhook name (the same name updates it)")] = "cyclegan-promotion",
    json_out: Annotated[bool, typer.Option("--json", help="print the webhook as JSON (last line)")] = False,
) -> None:
    """Create or update the MLflow webhook posting alias moves to the receiver (secret: CYCLEGAN_WEBHOOK_SECRET
    or the Prefect Secret block CYCLEGAN_WEBHOOK_SECRET_BLOCK)."""
    from mlflow.exceptions import MlflowException

    from pipelines.promotion.settings import PromotionError, webhook_secret
    from pipelines.promotion.webhook import ensure_webhook
    from pipelines.tracking.session import RegistryError, check_reachable, mlflow_client

    if not url.startswith(("http://", "https://")):
        refuse(f"--url {url!r}: expected an http(s) URL of the receiver")
    tracking_uri = services().tracking_uri
    if not tracking_uri.startswith(("http://", "https://")):
        refuse(f"MLFLOW_TRACKING_URI is {tracking_uri!r}: webhooks need an MLflow tracking server (http://...)")
    try:
        secret = webhook_secret(os.environ)
        check_reachable(tracking_uri)
        webhook, created = ensure_webhook(mlflow_client(tracking_uri), url=url, name=name,
                                          secret=secret.get_secret_value())
    except PromotionError as exc:
        refuse(str(exc))
    except RegistryError as exc:
        fail(str(exc))
    except MlflowException as exc:  # e.g. a URL the server's webhook policy refuses
        fail(f"MLflow at {tracking_uri} refused webhook {name!r} -> {url}: {exc.message} (see README, "
             "'Promotion rolls out', for MLFLOW_WEBHOOK_ALLOWED_SCHEMES / MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS)",
             ExitCode.REFUSED)
    typer.echo(f"{'created' if created else 'updated'} webhook {name} ({webhook.webhook_id}) -> {url}, "
               f"events {', '.join(str(e) for e in webhook.events)}")
    if json_out:
        print_json({"webhook_id": webhook.webhook_id, "name": name, "url": url, "created": created})


@app.command()
def receiver(
    model: Annotated[
        list[str] | None, typer.Option(help="watched model (repeatable; default CYCLEGAN_PROMOTION_MODELS)")
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(help="alias that rolls out (repeatable; default CYCLEGAN_PROMOTION_ALIASES or champion)"),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="listen address (default CYCLEGAN_RECEIVER_HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default CYCLEGAN_RECEIVER_PORT or 8091)")] = None,
    reconcile: Annotated[bool, typer.Option(help="ask Prefect to reconcile every watched alias on start")] = True,
) -> None:
    """Run the MLflow webhook receiver: verified alias moves become Prefect events (rollout-champion)."""
    from pydantic import ValidationError

    from pipelines.promotion.receiver import serve
    from pipelines.promotion.settings import PromotionError, receiver_settings_from_env

    try:
        settings = receiver_settings_from_env(
            os.environ, models=tuple(model or ()), aliases=tuple(alias or ()),
            host=host or os.environ.get("CYCLEGAN_RECEIVER_HOST"),
            port=port if port is not None else os.environ.get("CYCLEGAN_RECEIVER_PORT"),
            reconcile_on_start=reconcile)
    except (PromotionError, ValidationError) as exc:
        refuse(" ".join(str(exc).split()))
    if not os.environ.get("PREFECT_API_URL"):
        refuse("PREFECT_API_URL is not set: the receiver sends its events to a Prefect server")
    serve(settings)
