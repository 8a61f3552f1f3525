"""Users and permissions of an MLflow tracking server run with ``--app-name basic-auth``: the
idempotent bootstrap that gives the pipeline identity and the promoter their grants.

Roles (MLflow 3.17's auth validators decide what each permission allows):

- pipeline identity: ``EDIT`` on each registered model. Creating a model version and setting an alias
  both require ``update`` on the registered model, so the identity that registers is also the one
  whose promotion gate moves ``challenger`` / ``champion``; ``EDIT`` cannot delete versions or the
  model. It creates its own experiments (MLflow gives a creator ``MANAGE`` on what it creates).
- promoter: ``MANAGE`` on each registered model (move aliases by hand, delete versions, grant) and
  ``READ`` on every experiment (the runs and artifacts behind a version).

The registered models are created here, as the admin, so the pipeline never becomes their creator.
Run ``python -m pipelines.registry.access MODEL...`` with the variables of ``main``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from mlflow.exceptions import MlflowException
from mlflow.server.auth.routes import (
    CREATE_USER,
    GET_USER,
    GET_USER_PERMISSION,
    GRANT_USER_PERMISSION,
    REVOKE_USER_PERMISSION,
    UPDATE_USER_PASSWORD,
)
from mlflow.utils.rest_utils import MlflowHostCreds, http_request

from pipelines.tracking.session import RegistryError

log = logging.getLogger(__name__)

PIPELINE_MODEL_PERMISSION = "EDIT"
PROMOTER_MODEL_PERMISSION = "MANAGE"
PROMOTER_EXPERIMENT_PERMISSION = "READ"
CREATE_REGISTERED_MODEL = "/api/2.0/mlflow/registered-models/create"
GET_REGISTERED_MODEL = "/api/2.0/mlflow/registered-models/get"


class Credentials(NamedTuple):
    """A basic-auth user; the password never appears in its repr."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def admin_request(uri: str, admin: Credentials, endpoint: str, method: str, *, expect: Sequence[int] = (200,),
                  **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """One request to the server as ``admin``; (status, JSON body). Raises RegistryError naming the
    endpoint for a status outside ``expect`` (401: wrong admin credentials)."""
    creds = MlflowHostCreds(uri, username=admin.username, password=admin.password)
    try:
        response = http_request(creds, endpoint, method, max_retries=2, **kwargs)
    except MlflowException as exc:
        raise RegistryError(f"MLflow tracking server {uri} is unreachable: {exc}") from exc
    if response.status_code not in expect:
        hint = " (check the admin user and password)" if response.status_code == 401 else ""
        raise RegistryError(f"{method} {uri}{endpoint} answered {response.status_code}{hint}: "
                            f"{response.text[:300]}")
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    return response.status_code, body


def ensure_user(uri: str, admin: Credentials, user: Credentials) -> str:
    """Create ``user``, or set its password to ``user.password`` when it exists (the secret is the
    source of truth). Returns what was done."""
    status, _ = admin_request(uri, admin, GET_USER, "GET", params={"username": user.username}, expect=(200, 404))
    if status == 404:
        admin_request(uri, admin, CREATE_USER, "POST", json={"username": user.username, "password": user.password})
        return f"created user {user.username}"
    admin_request(uri, admin, UPDATE_USER_PASSWORD, "PATCH",
                  json={"username": user.username, "password": user.password})
    return f"user {user.username} exists; password set from its secret"


def ensure_registered_model(uri: str, admin: Credentials, name: str) -> str:
    status, _ = admin_request(uri, admin, GET_REGISTERED_MODEL, "GET", params={"name": name}, expect=(200, 404))
    if status == 200:
        return f"registered model {name} exists"
    admin_request(uri, admin, CREATE_REGISTERED_MODEL, "POST", json={"name": name})
    return f"created registered model {name}"


def grant(uri: str, admin: Credentials, username: str, resource_type: str, resource_id: str,
          permission: str) -> str:
    """Give ``username`` exactly ``permission`` on the resource (an existing grant of another level is
    replaced). Returns what was done."""
    target = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    status, body = admin_request(uri, admin, GRANT_USER_PERMISSION, "POST", json={**target, "permission": permission},
                                 expect=(200, 400))
    what = f"{username}: {permission} on {resource_type} {resource_id}"
    if status == 200:
        return what
    if body.get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise RegistryError(f"granting {what} at {uri} failed: {body}")
    _, held = admin_request(uri, admin, GET_USER_PERMISSION, "GET", params=target)
    if held.get("permission") == permission:
        return f"{what} (already granted)"
    admin_request(uri, admin, REVOKE_USER_PERMISSION, "POST", json=target)
    admin_request(uri, admin, GRANT_USER_PERMISSION, "POST", json={**target, "permission": permission})
    return f"{what} (was {held.get('permission')})"


def bootstrap_access(uri: str, *, admin: Credentials, pipeline: Credentials, promoter: Credentials,
                     model_names: Sequence[str]) -> list[str]:
    """Create (or update) the pipeline and promoter users, the registered models and their grants on the
    basic-auth server at ``uri``. Idempotent; returns one line per step (no password in any)."""
    if not model_names:
        raise RegistryError("name at least one registered model to grant permissions on")
    if len({admin.username, pipeline.username, promoter.username}) != 3:
        raise RegistryError("the admin, pipeline and promoter users must be three different users")
    done = [ensure_user(uri, admin, pipeline), ensure_user(uri, admin, promoter)]
    for name in model_names:
        done.append(ensure_registered_model(uri, admin, name))
        done.append(grant(uri, admin, pipeline.username, "registered_model", name, PIPELINE_MODEL_PERMISSION))
        done.append(grant(uri, admin, promoter.username, "registered_model", name, PROMOTER_MODEL_PERMISSION))
    done.append(grant(uri, admin, promoter.username, "experiment", "*", PROMOTER_EXPERIMENT_PERMISSION))
    return done


# Read by ``main`` only (the bootstrap's entry point); never by the pipeline's stages.
BOOTSTRAP_ENVIRONMENT = {
    "MLFLOW_TRACKING_URI": "the basic-auth tracking server",
    "MLFLOW_AUTH_ADMIN_USERNAME": "its admin user (the server creates it from the same variables)",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "the admin's password",
    "MLFLOW_PIPELINE_USERNAME": "the pipeline identity (the pipeline's MLFLOW_TRACKING_USERNAME)",
    "MLFLOW_PIPELINE_PASSWORD": "its password (the pipeline's MLFLOW_TRACKING_PASSWORD)",
    "MLFLOW_PROMOTER_USERNAME": "the promoter",
    "MLFLOW_PROMOTER_PASSWORD": "the promoter's password",
}


def credentials_from_env(env: Mapping[str, str]) -> tuple[str, Credentials, Credentials, Credentials]:
    missing = [name for name in BOOTSTRAP_ENVIRONMENT if not env.get(name)]
    if missing:
        raise RegistryError(f"set {', '.join(missing)} (see infra/README.md, MLflow users and permissions)")

    def pair(role: str) -> Credentials:
        return Credentials(env[f"MLFLOW_{role}_USERNAME"], env[f"MLFLOW_{role}_PASSWORD"])

    return env["MLFLOW_TRACKING_URI"], pair("AUTH_ADMIN"), pair("PIPELINE"), pair("PROMOTER")


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv:
        print("usage: python -m pipelines.registry.access MODEL_NAME [MODEL_NAME ...]", file=sys.stderr)
        return 2
    try:
        uri, admin, pipeline, promoter = credentials_from_env(env)
        for line in bootstrap_access(uri, admin=admin, pipeline=pipeline, promoter=promoter, model_names=argv):
            log.info("%s", line)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
