"""The promotion path's settings: which models and aliases are watched, the webhook secret, the
receiver's address. Read once from the environment at the entry (``receiver_settings_from_env``)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, SecretStr

from cyclegan_core.config import StrictModel
from pipelines.promotion.signature import REPLAY_WINDOW_S

# What the receiver and `cyclegan webhook setup` read (infra/ manifests are checked against it).
RECEIVER_ENVIRONMENT: dict[str, str] = {
    "CYCLEGAN_WEBHOOK_SECRET": "the MLflow webhook's HMAC secret (or CYCLEGAN_WEBHOOK_SECRET_BLOCK)",
    "CYCLEGAN_WEBHOOK_SECRET_BLOCK": "name of a Prefect Secret block holding the webhook secret",
    "CYCLEGAN_PROMOTION_MODELS": "comma-separated registered models whose aliases roll out",
    "CYCLEGAN_PROMOTION_ALIASES": "comma-separated aliases that roll out (default: champion)",
    "CYCLEGAN_RECEIVER_HOST": "address the receiver listens on (default 127.0.0.1)",
    "CYCLEGAN_RECEIVER_PORT": "port the receiver listens on (default 8091)",
}
DEFAULT_ALIASES = ("champion",)
DEFAULT_PORT = 8091


class PromotionError(RuntimeError):
    """The promotion path is misconfigured or a service refused; the message says what to set."""


class ReceiverSettings(StrictModel):
    """What the receiver accepts and where it listens."""

    secret: SecretStr
    models: tuple[str, ...] = Field(min_length=1, description="watched registered models")
    aliases: tuple[str, ...] = Field(DEFAULT_ALIASES, min_length=1, description="aliases that roll out")
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    replay_window_s: int = Field(REPLAY_WINDOW_S, ge=1)
    reconcile_on_start: bool = True

    def watches(self, model: str, alias: str) -> bool:
        return model in self.models and alias in self.aliases


def split_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def webhook_secret(env: Mapping[str, str]) -> SecretStr:
    """The webhook secret: ``CYCLEGAN_WEBHOOK_SECRET``, else the Prefect Secret block named by
    ``CYCLEGAN_WEBHOOK_SECRET_BLOCK``; never from a file of the repository."""
    if env.get("CYCLEGAN_WEBHOOK_SECRET"):
        return SecretStr(env["CYCLEGAN_WEBHOOK_SECRET"])
    block = env.get("CYCLEGAN_WEBHOOK_SECRET_BLOCK")
    if block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(block).get()
        except ValueError as exc:
            raise PromotionError(f"Prefect Secret block {block!r} (CYCLEGAN_WEBHOOK_SECRET_BLOCK) could not "
                                 f"be loaded: {exc}; create it with `prefect block create secret`") from exc
        if not isinstance(value, str) or not value:
            raise PromotionError(f"Prefect Secret block {block!r} holds no string secret")
        return SecretStr(value)
    raise PromotionError("no webhook secret: set CYCLEGAN_WEBHOOK_SECRET (e.g. `openssl rand -hex 32`) or "
                         "CYCLEGAN_WEBHOOK_SECRET_BLOCK to a Prefect Secret block's name")


def receiver_settings_from_env(env: Mapping[str, str], **overrides: object) -> ReceiverSettings:
    """The receiver's settings from ``env`` (``RECEIVER_ENVIRONMENT``) and the CLI's ``overrides``."""
    models = split_list(env.get("CYCLEGAN_PROMOTION_MODELS"))
    if not models and not overrides.get("models"):
        raise PromotionError("no watched model: set CYCLEGAN_PROMOTION_MODELS (comma-separated registered "
                             "model names) or pass --model")
    values: dict[str, object] = {"secret": webhook_secret(env), "models": models}
    aliases = split_list(env.get("CYCLEGAN_PROMOTION_ALIASES"))
    if aliases:
        values["aliases"] = aliases
    values.update({key: value for key, value in overrides.items() if value not in (None, ())})
    return ReceiverSettings.model_validate(values)
