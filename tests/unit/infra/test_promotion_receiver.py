"""The promotion receiver's deployment: the compose service and one-shot webhook setup, the MLflow
server's webhook policy, the Kubernetes Deployment + Service (infra/promotion/); the receiver runs the
project image, listens where its health check and Service look, takes its secrets from .env or
Kubernetes Secrets the README creates, and is published nowhere."""

from __future__ import annotations

import re
from typing import Any

from pipelines.promotion.settings import DEFAULT_PORT, RECEIVER_ENVIRONMENT
from tests.unit.infra.manifests import (
    INFRA,
    PROJECT_IMAGE,
    README,
    is_pinned,
    load_yaml_documents,
    service_env,
)

PROMOTION_DIR = INFRA / "promotion"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def kubernetes_promotion() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in load_yaml_documents(PROMOTION_DIR / "receiver.yaml")}


def test_the_compose_receiver_runs_the_project_image_unpublished_with_its_secret_from_env(compose) -> None:
    services = compose["services"]
    receiver = services["promotion-receiver"]
    assert receiver["image"].startswith(PROJECT_IMAGE + ":")
    assert receiver["command"] == ["python", "-m", "pipelines.promotion.receiver"]
    assert "ports" not in receiver, "only MLflow calls the receiver, on the compose network"
    env = service_env(receiver)
    assert set(env) - {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING"} <= set(RECEIVER_ENVIRONMENT)
    assert INTERPOLATION.fullmatch(env["CYCLEGAN_WEBHOOK_SECRET"])
    assert env["PREFECT_API_URL"] == service_env(services["prefect-worker"])["PREFECT_API_URL"]
    assert f":{env['CYCLEGAN_RECEIVER_PORT']}/health" in " ".join(receiver["healthcheck"]["test"])


def test_the_compose_webhook_setup_calls_the_receiver_with_the_same_secret(compose) -> None:
    services = compose["services"]
    setup, receiver = services["promotion-webhook"], services["promotion-receiver"]
    command = setup["command"]
    assert command[:3] == ["cyclegan", "webhook", "setup"]
    url = command[command.index("--url") + 1]
    assert url == f"http://promotion-receiver:{service_env(receiver)['CYCLEGAN_RECEIVER_PORT']}/mlflow-webhook"
    secret = INTERPOLATION.fullmatch(service_env(setup)["CYCLEGAN_WEBHOOK_SECRET"])
    assert secret and secret.group(1) == INTERPOLATION.fullmatch(
        service_env(receiver)["CYCLEGAN_WEBHOOK_SECRET"]).group(1)
    assert setup["depends_on"]["promotion-receiver"]["condition"] == "service_healthy"
    # MLflow lets only its admin manage webhooks.
    assert INTERPOLATION.fullmatch(service_env(setup)["MLFLOW_TRACKING_USERNAME"]).group(1) == "MLFLOW_ADMIN_USERNAME"


def test_the_mlflow_server_may_call_the_receiver_and_keeps_one_encryption_key(compose) -> None:
    env = service_env(compose["services"]["mlflow"])
    assert "http" in env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"].split(",")
    assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert INTERPOLATION.fullmatch(env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"])


def test_the_kubernetes_receiver_is_a_cluster_internal_service_with_secrets_from_secrets() -> None:
    docs = kubernetes_promotion()
    assert set(docs) == {"Deployment", "Service"}
    deployment, service = docs["Deployment"], docs["Service"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith(PROJECT_IMAGE + ":") and is_pinned(container["image"])
    assert container["command"] == ["python", "-m", "pipelines.promotion.receiver"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    env = {entry["name"]: entry for entry in container["env"]}
    port = int(env["CYCLEGAN_RECEIVER_PORT"]["value"])
    assert port == DEFAULT_PORT and container["ports"] == [{"containerPort": port, "name": "http"}]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    readme = README.read_text()
    for name in ("CYCLEGAN_WEBHOOK_SECRET", "PREFECT_API_AUTH_STRING"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert re.search(rf"create secret generic {ref['name']} .*--from-literal={ref['key']}=", readme), (
            f"{README} must create the Secret {ref['name']} with key {ref['key']}")
    assert set(env) - {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING"} <= set(RECEIVER_ENVIRONMENT)
