"""docker compose: references (volumes, networks, secrets, depends_on, bind mounts, build contexts)
resolve, ``${VAR}`` interpolations have a value in .env.example, health checks where a service keeps
state or others wait for it to be healthy; .env.example holds placeholders only."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.infra.manifests import (
    COMPOSE_DIR,
    ENV_EXAMPLE,
    PROJECT_IMAGE,
    SECRET_NAME,
    depends_on,
    named_volumes_of,
    parse_env_file,
    service_env,
    walk_strings,
)


def test_compose_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    networks = set(compose.get("networks") or {})
    secrets = set(compose.get("secrets") or {})
    for name, service in services.items():
        for volume in named_volumes_of(service):
            assert volume in volumes, (
                f"service {name}: volume {volume!r} is not declared under top-level volumes"
            )
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), (
                    f"service {name}: bind mount source {source} does not exist"
                )
        service_networks = service.get("networks") or []
        for network in service_networks if isinstance(service_networks, list) else service_networks.keys():
            assert network in networks, f"service {name}: network {network!r} is not declared under networks"
        for secret in service.get("secrets") or []:
            secret_name = secret if isinstance(secret, str) else secret["source"]
            assert secret_name in secrets, (
                f"service {name}: secret {secret_name!r} is not declared under secrets"
            )
        for target in depends_on(service):
            assert target in services, f"service {name}: depends_on names unknown service {target!r}"
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), f"service {name}: build file missing"


def test_compose_declares_what_the_stack_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "ray-head",
        "ray-worker",
    } <= set(services)
    assert "prefect worker start --pool cyclegan-pool" in " ".join(services["prefect-worker"]["command"])
    mlflow_command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow_command
    assert "--artifacts-destination=s3://" in mlflow_command
    assert service_env(services["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert (
        "postgresql+asyncpg://"
        in service_env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert "mc mb" in services["minio-init"]["command"][0]
    for name in ("prefect-worker", "ray-head", "ray-worker"):
        assert services[name]["image"].startswith(PROJECT_IMAGE + ":"), f"{name} must run the project image"


def test_compose_depends_on_conditions_fit_their_targets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy; it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", (
                    f"{target} is awaited as a one-shot: restart: 'no'"
                )
            else:
                assert condition == "service_started", f"{name}: unknown depends_on condition {condition!r}"


def test_stateful_and_serving_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if named_volumes_of(service) or service.get("ports"):
            check = service.get("healthcheck")
            assert check and check.get("test"), (
                f"service {name} keeps state or serves a port: add a healthcheck"
            )
            assert not check.get("disable"), f"service {name}: healthcheck disabled"


def test_compose_interpolations_have_values_in_env_example(compose: dict[str, Any]) -> None:
    example = parse_env_file(ENV_EXAMPLE)
    pattern = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")
    used = set()
    for text in walk_strings(compose):
        for match in pattern.finditer(text):
            if match.group(1) == "$":
                continue  # $$ escapes a literal $ for the container's shell
            used.add(match.group(2) or match.group(3))
    missing = sorted(name for name in used if not example.get(name))
    assert not missing, f"{ENV_EXAMPLE} has no value for {missing}, which docker-compose.yaml interpolates"
    unused = sorted(set(example) - used)
    assert not unused, f"{ENV_EXAMPLE} sets {unused}, which docker-compose.yaml never uses"


def test_env_example_holds_placeholders_not_secrets() -> None:
    for key, value in parse_env_file(ENV_EXAMPLE).items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, (
                f"{ENV_EXAMPLE}: {key} must be a change-me placeholder, got {value!r}"
            )
    gitignore = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert ".env" in gitignore, "infra/compose/.gitignore must keep the filled-in .env out of git"
