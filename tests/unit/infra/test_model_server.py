"""The model server's deployment: the compose service and the Kubernetes Deployment + Service
(infra/serving/) run `cyclegan serve` with options the command has, listen where their port, health
checks and Service look, read MLflow as the pipeline identity, and are published on loopback / inside the
cluster only."""

from __future__ import annotations

import re
from typing import Any

import typer

from pipelines.cli import app
from pipelines.serving.front import FORWARDED_PATHS, SERVED_VERSION_PATH
from tests.unit.infra.manifests import (
    INFRA,
    PROJECT_IMAGE,
    README,
    config_maps,
    is_pinned,
    load_yaml_documents,
    service_env,
)

SERVING_DIR = INFRA / "serving"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def serve_options(command: list[str]) -> dict[str, str]:
    """The options of a `cyclegan serve ...` command line, checked against the command's own parser."""
    assert command[:2] == ["cyclegan", "serve"], command
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    context = serve.make_context("serve", list(command[2:]))  # a wrong option or value raises
    return {key: str(value) for key, value in context.params.items()}


def test_the_compose_model_server_serves_on_its_bound_port_as_the_pipeline_identity(compose: dict[str, Any]) -> None:
    services = compose["services"]
    server = services["model-server"]
    assert server["image"].startswith(PROJECT_IMAGE + ":")
    options = serve_options(server["command"])
    assert options["host"] == "0.0.0.0" and options["model"] in services["mlflow-access"]["command"]
    assert server["ports"] == [f"${{SERVING_BIND:-127.0.0.1}}:{options['port']}:{options['port']}"]
    assert f":{options['port']}{SERVED_VERSION_PATH}" in " ".join(server["healthcheck"]["test"])
    env, worker = service_env(server), service_env(services["prefect-worker"])
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[name] == worker[name], f"compose model-server: {name} as the flow runs have it"
    assert server["depends_on"]["mlflow-access"]["condition"] == "service_completed_successfully"


def test_the_kubernetes_model_server_is_a_cluster_internal_service_reading_mlflow_from_the_pipeline_env() -> None:
    docs = {doc["kind"]: doc for doc in load_yaml_documents(SERVING_DIR / "model-server.yaml")}
    assert set(docs) == {"Deployment", "Service"}
    deployment, service = docs["Deployment"], docs["Service"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith(PROJECT_IMAGE + ":") and is_pinned(container["image"])
    options = serve_options(container["command"])
    assert container["ports"] == [{"containerPort": int(options["port"]), "name": "http"}]
    assert options["host"] == "0.0.0.0"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in (*FORWARDED_PATHS, SERVED_VERSION_PATH)
    env = {entry["name"]: entry["valueFrom"] for entry in container["env"]}
    uri = env["MLFLOW_TRACKING_URI"]["configMapKeyRef"]
    assert uri["key"] in config_maps()[uri["name"]]
    readme = README.read_text()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        ref = env[name]["secretKeyRef"]
        assert re.search(rf"create secret generic {ref['name']} .*--from-literal={ref['key']}=", readme), (
            f"{README} must create the Secret {ref['name']} with key {ref['key']}")
