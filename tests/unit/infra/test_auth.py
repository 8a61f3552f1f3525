"""Authentication and exposure of the stacks: no host port on all interfaces by default, every server
with its authentication on, credentials from .env interpolations or Kubernetes Secrets (never
literals), no public Kubernetes Service, and the MLflow users bootstrap covering the deployed models.
The servers themselves are exercised in tests/integration/test_auth.py."""

from __future__ import annotations

import configparser
import re
from typing import Any

import pytest
import yaml

from pipelines.config import CREDENTIAL_ENVIRONMENT, RegistrySettings
from pipelines.registry.access import BOOTSTRAP_ENVIRONMENT, Credentials, credentials_from_env
from pipelines.tracking.session import RegistryError
from tests.unit.infra.manifests import (
    ENV_EXAMPLE,
    INFRA,
    REPO,
    SECRET_NAME,
    config_maps,
    deployment_job_variables,
    kubernetes_documents,
    load_template,
    parse_dockerfile,
    parse_env_file,
    pod_containers,
    ray_cluster_document,
    service_env,
)

AUTH_INI = INFRA / "docker" / "mlflow-basic-auth.ini"
MLFLOW_DOCKERFILE = INFRA / "docker" / "mlflow-server.Dockerfile"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")
# Names whose values are credentials, beside the secret-looking ones.
CREDENTIAL_NAMES = CREDENTIAL_ENVIRONMENT | {name for name in BOOTSTRAP_ENVIRONMENT if "PASSWORD" in name}


def resolve_default(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``${VAR:-default}`` replaced as compose does with ``values`` as the .env."""
    return INTERPOLATION.sub(lambda m: values.get(m.group(1)) or (m.group(2) or ""), text)


def published_hosts(service: dict[str, Any], values: dict[str, str]) -> list[str]:
    """The host address each published port of a compose service binds ('' = all interfaces)."""
    hosts = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            hosts.append(resolve_default(str(port.get("host_ip", "")), values))
            continue
        parts = resolve_default(str(port), values).split(":")
        hosts.append(":".join(parts[:-2]) if len(parts) > 2 else "")
    return hosts


def test_no_port_is_published_on_all_interfaces_by_default(compose: dict[str, Any]) -> None:
    example = parse_env_file(ENV_EXAMPLE)
    published = 0
    for name, service in compose["services"].items():
        for port, host in zip(service.get("ports") or [], published_hosts(service, example), strict=True):
            published += 1
            assert host == "127.0.0.1", f"compose {name}: {port!r} publishes on {host or 'every interface'}"
            # The variable that opens it, unset, still means loopback.
            assert published_hosts({"ports": [port]}, {}) == ["127.0.0.1"], f"compose {name}: {port!r}"
    assert published >= 6


def test_the_mlflow_server_runs_with_basic_auth(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = service_env(mlflow)
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert INTERPOLATION.fullmatch(env.get(name, "")), f"compose mlflow: {name} must come from .env"
    ini = configparser.ConfigParser()
    ini.read(AUTH_INI)
    assert ini["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert not ini["mlflow"].get("admin_password"), f"{AUTH_INI} must not hold the admin password"
    assert ini["mlflow"]["database_uri"].startswith("sqlite:////var/lib/mlflow-auth/")
    assert any(v.endswith(":/var/lib/mlflow-auth") for v in mlflow["volumes"]), "the user store needs its volume"
    instructions = parse_dockerfile(MLFLOW_DOCKERFILE)
    (cmd,) = [args for keyword, args in instructions if keyword == "CMD"]
    assert '"--app-name", "basic-auth"' in cmd, "the image's own default must be the authenticated server"
    assert ("ENV", "MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini") in instructions
    assert any(k == "COPY" and args.startswith(AUTH_INI.name) for k, args in instructions)


def test_every_prefect_process_presents_the_servers_auth_string(compose: dict[str, Any]) -> None:
    services = compose["services"]
    server = service_env(services["prefect-server"])
    match = INTERPOLATION.fullmatch(server.get("PREFECT_SERVER_API_AUTH_STRING", ""))
    assert match, "compose prefect-server: PREFECT_SERVER_API_AUTH_STRING must come from .env"
    clients = [name for name, service in services.items() if "PREFECT_API_URL" in service_env(service)]
    assert {"prefect-pool", "prefect-worker"} <= set(clients)
    for name in clients:
        value = service_env(services[name]).get("PREFECT_API_AUTH_STRING", "")
        found = INTERPOLATION.fullmatch(value)
        assert found and found.group(1) == match.group(1), f"compose {name}: PREFECT_API_AUTH_STRING of the server"


def test_the_flow_runs_sign_in_to_mlflow_as_the_pipeline_identity(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, access = service_env(services["prefect-worker"]), service_env(services["mlflow-access"])
    assert set(access) == set(BOOTSTRAP_ENVIRONMENT)
    for client, bootstrap in (("MLFLOW_TRACKING_USERNAME", "MLFLOW_PIPELINE_USERNAME"),
                              ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_PIPELINE_PASSWORD")):
        worker_var, access_var = INTERPOLATION.fullmatch(worker[client]), INTERPOLATION.fullmatch(access[bootstrap])
        assert worker_var and access_var and worker_var.group(1) == access_var.group(1), client
    assert services["prefect-worker"]["depends_on"]["mlflow-access"]["condition"] == "service_completed_successfully"


def test_the_users_bootstrap_covers_every_deployed_model(compose: dict[str, Any]) -> None:
    command = compose["services"]["mlflow-access"]["command"]
    assert command[:3] == ["python", "-m", "pipelines.registry.access"]
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    wanted = {RegistrySettings().model_name} | {
        d["parameters"]["config"].get("registry", {}).get("model_name", RegistrySettings().model_name)
        for d in deployments if "config" in d.get("parameters", {})
    } | {d["parameters"]["model_name"] for d in deployments if "model_name" in d.get("parameters", {})}
    assert wanted <= set(command[3:]), f"mlflow-access grants on {command[3:]}; prefect.yaml registers {wanted}"


def test_compose_credentials_come_from_env_interpolations(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if SECRET_NAME.search(key) or key in CREDENTIAL_NAMES:
                assert INTERPOLATION.fullmatch(value), f"compose {name}: {key} must come from .env, got {value!r}"


def test_kubernetes_credentials_come_from_secrets() -> None:
    for path, doc in kubernetes_documents():
        for where, container in pod_containers(doc):
            for entry in container.get("env", []):
                if SECRET_NAME.search(entry["name"]) or entry["name"] in CREDENTIAL_NAMES:
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{path.name}:{where}: {entry['name']}"
    for name, data in config_maps().items():
        leaked = sorted(k for k in data if SECRET_NAME.search(k) or k in CREDENTIAL_NAMES)
        assert not leaked, f"ConfigMap {name} holds credentials {leaked}"
    job_env = deployment_job_variables()["env"]
    assert not [k for k in job_env if SECRET_NAME.search(k) or k in CREDENTIAL_NAMES]
    container = load_template("kubernetes")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"][0]
    assert {"name": "{{ mlflow_credentials_secret }}"} in [e["secretRef"] for e in container["envFrom"]]


def test_kubernetes_exposes_no_public_service() -> None:
    assert ray_cluster_document()["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    for path, doc in kubernetes_documents():
        assert doc["kind"] != "Ingress", f"{path}: an Ingress exposes the cluster"
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{path}: {doc['spec']['type']} Service"


# --- the bootstrap's entry ---------------------------------------------------------------------------


def test_credentials_never_show_their_password() -> None:
    user = Credentials("cyclegan-pipeline", "s3cret-value")
    assert "s3cret-value" not in repr(user) and "s3cret-value" not in str(user)


def test_the_bootstrap_names_the_missing_variables_without_values() -> None:
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret"}
    with pytest.raises(RegistryError) as missing:
        credentials_from_env(env)
    message = str(missing.value)
    assert "MLFLOW_PIPELINE_PASSWORD" in message and "MLFLOW_AUTH_ADMIN_USERNAME" in message
    assert "admin-secret" not in message
    full = {name: f"value-of-{name}" for name in BOOTSTRAP_ENVIRONMENT}
    uri, admin, pipeline, promoter = credentials_from_env(full)
    assert uri == full["MLFLOW_TRACKING_URI"]
    assert (admin.username, pipeline.password, promoter.username) == (
        full["MLFLOW_AUTH_ADMIN_USERNAME"], full["MLFLOW_PIPELINE_PASSWORD"], full["MLFLOW_PROMOTER_USERNAME"])
