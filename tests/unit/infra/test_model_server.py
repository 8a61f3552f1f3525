"""The model server's deployments: the compose service runs `cyclegan serve` (its own Ray inside the
container) with options the command has; the Kubernetes RayService (infra/serving/) validates against the
KubeRay schema, its serveConfigV2 is a Serve config Ray accepts whose application builds from its args,
its replicas fit the worker pods, and it reads MLflow as the pipeline identity, inside the cluster only."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from pipelines.cli import app
from pipelines.serving.settings import SERVED_VERSION_PATH, ServeSettings
from tests.unit.infra.manifests import (
    INFRA,
    KUBERAY_SCHEMA,
    PROJECT_IMAGE,
    README,
    config_maps,
    is_pinned,
    load_yaml_documents,
    service_env,
)

SERVING_DIR = INFRA / "serving"


def serve_options(command: list[str]) -> dict[str, str]:
    """The options of a `cyclegan serve ...` command line, checked against the command's own parser."""
    assert command[:2] == ["cyclegan", "serve"], command
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    context = serve.make_context("serve", list(command[2:]))  # a wrong option or value raises
    return {key: str(value) for key, value in context.params.items()}


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    (doc,) = load_yaml_documents(SERVING_DIR / "rayservice.yaml")
    return doc


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def containers(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    found = {"head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0]}
    for group in cluster["workerGroupSpecs"]:
        (found[group["groupName"]],) = group["template"]["spec"]["containers"]
    return found


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
    assert "RAY_ADDRESS" not in env, "the model server runs its own Ray, not on the training cluster"
    assert server["depends_on"]["mlflow-access"]["condition"] == "service_completed_successfully"


def test_the_rayservice_validates_against_the_kuberay_schema(rayservice: dict[str, Any]) -> None:
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/rayService"})
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(rayservice)]
    assert not errors, errors
    broken = copy.deepcopy(rayservice)
    broken["spec"]["serveConfig"] = broken["spec"].pop("serveConfigV2")  # the v1 field KubeRay dropped
    broken["spec"]["upgradeStrategy"]["type"] = "Rolling"
    messages = " | ".join(e.message for e in validator.iter_errors(broken))
    assert "'serveConfig' was unexpected" in messages and "'Rolling' is not one of" in messages


def test_the_serve_config_is_one_ray_accepts_and_its_application_builds_from_its_args(
        rayservice: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serving.app import build_app

    config = ServeDeploySchema.model_validate(serve_config(rayservice))
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 8000)
    (application,) = config.applications
    assert application.import_path == "pipelines.serving.app:build_app" and application.route_prefix == "/"
    settings = ServeSettings.model_validate({"tracking_uri": "http://mlflow:5000", **application.args})
    assert settings.model == "cyclegan" and settings.alias == "champion"
    assert build_app(application.args) is not None  # the builder takes MLFLOW_TRACKING_URI from the pod


def test_each_model_replica_fits_a_worker_pod_of_its_kind(rayservice: dict[str, Any]) -> None:
    settings = ServeSettings.model_validate(
        {"tracking_uri": "x", **serve_config(rayservice)["applications"][0]["args"]}
    )
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "replicas go to the worker pods"
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    limits = {name: container["resources"]["limits"] for name, container in containers(rayservice).items()}
    kind = "gpu" if settings.replica_gpus else "cpu"
    assert float(limits[kind]["cpu"]) >= settings.replica_cpus
    assert float(limits[kind].get("nvidia.com/gpu", 0)) >= settings.replica_gpus
    assert groups["cpu"]["maxReplicas"] >= 1 and "nvidia.com/gpu" not in limits["cpu"]
    assert limits["gpu"]["nvidia.com/gpu"] == containers(rayservice)["gpu"]["resources"]["requests"]["nvidia.com/gpu"]


def test_the_rayservice_runs_the_pinned_project_image_inside_the_cluster(rayservice: dict[str, Any]) -> None:
    assert rayservice["metadata"]["namespace"] == "cyclegan"
    for name, container in containers(rayservice).items():
        assert container["image"].startswith(PROJECT_IMAGE + ":") and is_pinned(container["image"]), name
        assert {"containerPort": 8000, "name": "serve"} in container["ports"], f"{name}: Serve's proxy port"
    spec = rayservice["spec"]
    assert spec["rayClusterConfig"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert "serveService" not in spec, "KubeRay's default serve Service is ClusterIP: expose it through your Ingress"
    assert spec["rayClusterConfig"]["authOptions"] == {"mode": "token", "secretName": "cyclegan-ray-token"}


def test_the_replicas_read_mlflow_from_the_pipeline_env_and_its_credentials_secret(rayservice: dict[str, Any]) -> None:
    readme = README.read_text()
    for name, container in containers(rayservice).items():
        env = {entry["name"]: entry["valueFrom"] for entry in container["env"]}
        uri = env["MLFLOW_TRACKING_URI"]["configMapKeyRef"]
        assert uri["key"] in config_maps()[uri["name"]], name
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            ref = env[variable]["secretKeyRef"]
            assert re.search(rf"create secret generic {ref['name']} .*--from-literal={ref['key']}=", readme), (
                f"{README} must create the Secret {ref['name']} with key {ref['key']}")


def test_the_kustomization_applies_the_rayservice() -> None:
    spec = yaml.safe_load((SERVING_DIR / "kustomization.yaml").read_text())
    assert spec["resources"] == ["rayservice.yaml"]
    assert {image["name"] for image in spec["images"]} == {PROJECT_IMAGE}
