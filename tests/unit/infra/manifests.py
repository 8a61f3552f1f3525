"""Paths of infra/ and the parsers the manifest checks share (compose, Dockerfiles, env files,
KubeRay documents, Prefect templates, constraints); plain functions, no tests."""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pipelines.config import CREDENTIAL_ENVIRONMENT, ENVIRONMENT, OPTIONAL_ENVIRONMENT
from pipelines.promotion.settings import RECEIVER_ENVIRONMENT
from pipelines.registry.access import BOOTSTRAP_ENVIRONMENT

REPO = Path(__file__).resolve().parents[3]
INFRA = REPO / "infra"
COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILES = [INFRA / "docker" / "Dockerfile", INFRA / "docker" / "mlflow-server.Dockerfile"]
CONSTRAINTS = INFRA / "docker" / "constraints.txt"
RAY_DIR = INFRA / "ray"
KUBERAY_SCHEMA = INFRA / "schemas" / "kuberay-v1.schema.json"
LAUNCHER = RAY_DIR / "aws" / "cluster.yaml"
PREFECT_DIR = INFRA / "prefect"
README = INFRA / "README.md"
PROJECT_IMAGE = "cyclegan-pipeline"
JOB_VARIABLES = PREFECT_DIR / "kubernetes-job-variables.yaml"
AWS_ENV_EXAMPLE = RAY_DIR / "aws" / "cyclegan.env.example"

# Variables that look like the pipeline's (same prefixes) but are read by a service, not the pipeline.
SERVICE_SIDE_VARIABLES = {
    "MLFLOW_S3_ENDPOINT_URL": "the MLflow server's endpoint for its S3 artifact store",
    "PREFECT_API_DATABASE_CONNECTION_URL": "the Prefect server's database",
    "MLFLOW_AUTH_CONFIG_PATH": "the MLflow server's basic-auth configuration file",
    "MLFLOW_AUTH_ADMIN_USERNAME": "the MLflow server's admin user (created on first start)",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "the MLflow server's admin password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "the MLflow server's CSRF signing key",
    # The users bootstrap (python -m pipelines.registry.access) reads these.
    **{name: what for name, what in BOOTSTRAP_ENVIRONMENT.items() if name not in ENVIRONMENT},
    # The promotion receiver and `cyclegan webhook setup` read these; the MLflow server its webhook policy.
    **RECEIVER_ENVIRONMENT,
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "the MLflow server's webhook URL schemes (http for the compose network)",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "the MLflow server may call a webhook on a private address",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "the MLflow server's Fernet key for stored webhook secrets",
}
# What every deployment sets: the pipeline's endpoints, less what it reads only when set and less the
# credentials, which only the processes that talk to MLflow / Prefect get (CREDENTIAL_ENVIRONMENT).
DEPLOYED_ENVIRONMENT = set(ENVIRONMENT) - OPTIONAL_ENVIRONMENT - CREDENTIAL_ENVIRONMENT
PIPELINE_LIKE = re.compile(r"^(AWS_|MLFLOW_|CYCLEGAN_|PREFECT_API_)|^RAY_ADDRESS$")
# The two keys of the Kubernetes Secret cyclegan-s3-credentials (documented in infra/README.md).
S3_CREDENTIAL_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# Read by Ray itself (token authentication of the cluster), set beside the pipeline's variables.
RAY_AUTH = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
# The keys of the Kubernetes Secret cyclegan-mlflow-credentials (the pipeline identity).
MLFLOW_CREDENTIAL_KEYS = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|AUTH_STRING|(^|_)KEY($|_)", re.IGNORECASE)


# --- files -----------------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def infra_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix in suffixes)


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), (
            f"{path}:{number}: expected KEY=VALUE, got {line!r}"
        )
        values[key] = value
    return values


@functools.cache
def compose_spec() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def deployment_job_variables() -> dict[str, Any]:
    """The train-cyclegan deployment's job variables on the Kubernetes work pool."""
    return yaml.safe_load(JOB_VARIABLES.read_text())


def load_template(name: str) -> dict[str, Any]:
    return json.loads((PREFECT_DIR / f"{name}-pool.base-job-template.json").read_text())


# --- images and versions ---------------------------------------------------------------------------


def is_pinned(image: str) -> bool:
    """True for ``name:tag`` with a versioned tag (not latest, holds a digit) or ``name@sha256:...``."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return bool(tag) and "latest" not in tag.lower() and any(c.isdigit() for c in tag) and "$" not in tag


def image_tag(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[1]


def constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{CONSTRAINTS}: {line!r} must pin an exact version (==)"
            pins[requirement.name.lower()] = Version(spec.version)
    return pins


def pyproject_ranges() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(dep).name.lower(): Requirement(dep).specifier for dep in project["dependencies"]}


def package_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def all_image_references() -> list[tuple[str, str]]:
    """(where, image) for every image the manifests name."""
    found: list[tuple[str, str]] = []
    for name, service in compose_spec()["services"].items():
        assert "image" in service, (
            f"compose service {name} names no image (a build needs image: NAME:TAG too)"
        )
        found.append((f"compose:{name}", service["image"]))
    for dockerfile in DOCKERFILES:
        for keyword, args in parse_dockerfile(dockerfile):
            if keyword == "FROM":
                found.append(
                    (dockerfile.name, args.split()[0] if "--platform" not in args else args.split()[1])
                )
    for path, doc in kubernetes_documents():
        for where, container in pod_containers(doc):
            found.append((f"{path.name}:{where}", container["image"]))
    found.append((LAUNCHER.name, yaml.safe_load(LAUNCHER.read_text())["docker"]["image"]))
    found.append(("kubernetes-job-variables.yaml", deployment_job_variables()["image"]))
    template = load_template("kubernetes")
    found.append(
        ("kubernetes-pool template default", template["variables"]["properties"]["image"]["default"])
    )
    return found


# --- Dockerfiles -----------------------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def env_assignments(keyword: str, args: str) -> dict[str, str]:
    """Names and values of an ENV or ARG instruction (``K=V K2=V2``, legacy ``ENV K V``, ``ARG K``)."""
    tokens = shlex.split(args)
    if keyword == "ENV" and tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    assignments = {}
    for token in tokens:
        name, _, value = token.partition("=")
        assignments[name] = value
    return assignments


def dockerignore_allows(ignore_file: Path, relative: str) -> bool:
    """Whether a path of the build context survives the ignore file, as Docker decides: a pattern that
    matches the path or one of its parent folders applies, the last one that applies wins."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in ignore_file.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            suffix = pattern[3:]
            applies = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], suffix) for p in prefixes)
        else:
            applies = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if applies:
            included = negate
    return included


# --- docker compose --------------------------------------------------------------------------------


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def named_volumes_of(service: dict[str, Any]) -> list[str]:
    names = []
    for volume in service.get("volumes") or []:
        source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":", 1)[0]
        kind = volume.get("type", "volume") if isinstance(volume, dict) else None
        if source and not source.startswith((".", "/", "~", "$")) and kind in (None, "volume"):
            names.append(source)
    return names


# --- Kubernetes / KubeRay --------------------------------------------------------------------------


@functools.cache
def kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(RAY_DIR.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.parent.name == "aws":
            continue
        docs.extend((path, doc) for doc in load_yaml_documents(path))
    return docs


def pod_containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "RayJob":
        template = spec.get("submitterPodTemplate")
        if template:
            for container in template["spec"]["containers"]:
                yield f"submitter/{container['name']}", container
        spec = spec.get("rayClusterSpec") or {}
    if "headGroupSpec" in spec:
        for container in spec["headGroupSpec"]["template"]["spec"]["containers"]:
            yield f"head/{container['name']}", container
        for group in spec["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                yield f"{group['groupName']}/{container['name']}", container


def ray_cluster_document() -> dict[str, Any]:
    """The one RayCluster of infra/ray/."""
    return next(doc for _, doc in kubernetes_documents() if doc["kind"] == "RayCluster")


# --- environment variables -------------------------------------------------------------------------


@functools.cache
def config_maps() -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: doc["data"]
        for _, doc in kubernetes_documents()
        if doc["kind"] == "ConfigMap"
    }


def container_env_names(container: dict[str, Any]) -> set[str]:
    names = {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps(), (
                f"container {container['name']}: ConfigMap {name} is not in infra/ray/"
            )
            names |= set(config_maps()[name])
        if "secretRef" in source:
            names |= S3_CREDENTIAL_KEYS
    return names


def manifest_env_names() -> dict[str, set[str]]:
    """Every environment variable name each manifest sets, by where it is set."""
    services = compose_spec()["services"]
    found = {f"compose:{name}": set(service_env(service)) for name, service in services.items()}
    for dockerfile in DOCKERFILES:
        found[dockerfile.name] = {
            name
            for keyword, args in parse_dockerfile(dockerfile)
            if keyword == "ENV"
            for name in env_assignments(keyword, args)
        }
    for path, doc in kubernetes_documents():
        for where, container in pod_containers(doc):
            found[f"{path.name}:{where}"] = container_env_names(container)
    for name, data in config_maps().items():
        found[f"ConfigMap {name}"] = set(data) - {"train.yaml"}
    found["kubernetes-job-variables.yaml"] = set(deployment_job_variables()["env"])
    found["aws/cyclegan.env.example"] = set(parse_env_file(AWS_ENV_EXAMPLE))
    return found
