"""Static checks of the production stack in infra/ (Docker does not run on the CI machine).

What is checked, per the manifests' kind:
- every YAML/JSON file under infra/ (and prefect.yaml) parses;
- docker compose: references (volumes, networks, secrets, depends_on, bind mounts, build contexts)
  resolve, ``${VAR}`` interpolations have a value in .env.example, health checks where a service keeps
  state or others wait for it to be healthy;
- every image is pinned by an explicit version tag, and the versions agree with each other and with
  pyproject.toml's ranges;
- Dockerfiles: pinned FROM, non-root USER before CMD/ENTRYPOINT, no secret-looking ENV/ARG values,
  COPY sources present in the build context;
- KubeRay RayCluster/RayJob against a focused JSON schema of the v1 CRDs (infra/schemas/) plus the
  checks a schema cannot express; the Ray cluster launcher config against Ray's own validator;
- Prefect work-pool templates and job variables with Prefect's own server-side validators;
- one source of truth for the environment: the variables the manifests set that the pipeline reads
  are exactly ``pipelines.config.ENVIRONMENT``, checked both ways.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pipelines.config import ENVIRONMENT, OPTIONAL_ENVIRONMENT

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

# Variables that look like the pipeline's (same prefixes) but are read by a service, not the pipeline.
SERVICE_SIDE_VARIABLES = {
    "MLFLOW_S3_ENDPOINT_URL": "the MLflow server's endpoint for its S3 artifact store",
    "PREFECT_API_DATABASE_CONNECTION_URL": "the Prefect server's database",
}
# What every deployment sets: the pipeline's variables less those it reads only when set.
DEPLOYED_ENVIRONMENT = set(ENVIRONMENT) - OPTIONAL_ENVIRONMENT
PIPELINE_LIKE = re.compile(r"^(AWS_|MLFLOW_|CYCLEGAN_|PREFECT_API_)|^RAY_ADDRESS$")
# The two keys of the Kubernetes Secret cyclegan-s3-credentials (documented in infra/README.md).
S3_CREDENTIAL_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# Read by Ray itself (token authentication of the cluster), set beside the pipeline's variables.
RAY_AUTH = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------------------


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
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(dep).name.lower(): Requirement(dep).specifier for dep in project["dependencies"]}


# --- Dockerfile parsing ----------------------------------------------------------------------------


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


# --- every file parses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", infra_files(".yaml", ".yml") + [REPO / "prefect.yaml"], ids=lambda p: str(p.relative_to(REPO))
)
def test_yaml_file_parses(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} not present")
    assert load_yaml_documents(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", infra_files(".json"), ids=lambda p: str(p.relative_to(REPO)))
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# --- docker compose --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


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


# --- images and versions ---------------------------------------------------------------------------


def all_image_references() -> list[tuple[str, str]]:
    """(where, image) for every image the manifests name."""
    found: list[tuple[str, str]] = []
    for name, service in yaml.safe_load(COMPOSE_FILE.read_text())["services"].items():
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
    job_variables = yaml.safe_load((PREFECT_DIR / "kubernetes-job-variables.yaml").read_text())
    found.append(("kubernetes-job-variables.yaml", job_variables["image"]))
    template = json.loads((PREFECT_DIR / "kubernetes-pool.base-job-template.json").read_text())
    found.append(
        ("kubernetes-pool template default", template["variables"]["properties"]["image"]["default"])
    )
    return found


def test_every_image_is_pinned_by_version() -> None:
    unpinned = [(where, image) for where, image in all_image_references() if not is_pinned(image)]
    assert not unpinned, f"images without an explicit version tag (no latest, no untagged): {unpinned}"


def test_project_image_tag_is_the_package_version() -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    refs = [(where, image) for where, image in all_image_references() if image.split(":")[0] == PROJECT_IMAGE]
    assert len(refs) >= 6
    wrong = [(where, image) for where, image in refs if image_tag(image) != version]
    assert not wrong, (
        f"the project image is {PROJECT_IMAGE}:{version} (pyproject version); these differ: {wrong}"
    )


def test_pinned_versions_are_inside_pyproject_ranges() -> None:
    ranges = pyproject_ranges()
    for name, version in constraints().items():
        assert name in ranges, f"{CONSTRAINTS}: {name} is not a dependency in pyproject.toml"
        assert ranges[name].contains(version), (
            f"{CONSTRAINTS}: {name}=={version} is outside pyproject's {ranges[name]}"
        )
    assert {"prefect", "ray", "mlflow", "torch"} <= set(constraints())


def test_versions_agree_across_manifests() -> None:
    pins = constraints()
    images = dict(all_image_references())
    base = images["Dockerfile"]
    assert base.startswith("pytorch/pytorch:"), base
    assert image_tag(base).split("-")[0] == str(pins["torch"]), (
        f"constraints torch must be the base image's ({base})"
    )
    assert image_tag(images["compose:prefect-server"]).startswith(f"{pins['prefect']}-"), (
        "Prefect server != worker"
    )
    assert f"mlflow=={pins['mlflow']}" in (INFRA / "docker" / "mlflow-server.Dockerfile").read_text()
    assert image_tag(images["compose:mlflow"]) == str(pins["mlflow"])
    raycluster = next(doc for _, doc in kubernetes_documents() if doc["kind"] == "RayCluster")
    assert raycluster["spec"]["rayVersion"] == str(pins["ray"]), (
        "RayCluster rayVersion must be the image's Ray"
    )
    prefect_yaml = REPO / "prefect.yaml"
    if prefect_yaml.exists():
        declared = yaml.safe_load(prefect_yaml.read_text()).get("prefect-version")
        assert declared in (None, str(pins["prefect"])), f"prefect.yaml prefect-version {declared} != image's"


# --- Dockerfiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_and_bakes_no_secrets(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert froms and all(is_pinned(args.split()[0]) for args in froms), f"{dockerfile}: unpinned FROM {froms}"
    user = "root"
    saw_start = False
    for keyword, args in instructions:
        if keyword == "USER":
            user = args.split(":")[0]
        if keyword in ("CMD", "ENTRYPOINT"):
            saw_start = True
            assert user not in ("root", "0"), (
                f"{dockerfile}: {keyword} runs as root; add USER <non-root> before it"
            )
        if keyword in ("ENV", "ARG"):
            for name, value in env_assignments(keyword, args).items():
                assert not (SECRET_NAME.search(name) and value), (
                    f"{dockerfile}: {keyword} {name} bakes a secret"
                )
    assert saw_start, f"{dockerfile}: no CMD or ENTRYPOINT"
    assert user not in ("root", "0"), f"{dockerfile}: the final USER is root"


def test_project_dockerfile_copies_only_what_the_build_context_sends() -> None:
    dockerfile = INFRA / "docker" / "Dockerfile"
    ignore = dockerfile.with_name("Dockerfile.dockerignore")
    copies = [args for keyword, args in parse_dockerfile(dockerfile) if keyword in ("COPY", "ADD")]
    assert copies
    for args in copies:
        *sources, _ = [token for token in shlex.split(args) if not token.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), (
                f"{dockerfile}: COPY source {source} is not in the repository root"
            )
            assert dockerignore_allows(ignore, source), (
                f"{ignore} excludes {source}, which the Dockerfile copies"
            )
    for excluded in (".venv", ".git", "tests", "infra/compose/.env.example"):
        assert not dockerignore_allows(ignore, excluded), (
            f"{ignore} must keep {excluded} out of the build context"
        )
    text = dockerfile.read_text()
    assert (
        "--constraint /opt/cyclegan/constraints.txt" in text
        and "docker build -f infra/docker/Dockerfile" in text
    )


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


@pytest.fixture(scope="module")
def kuberay_validators() -> dict[str, jsonschema.Draft202012Validator]:
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return {
        kind: jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{ref}"})
        for kind, ref in (("RayCluster", "rayCluster"), ("RayJob", "rayJob"))
    }


def test_kuberay_manifests_validate_against_the_crd_schema(kuberay_validators) -> None:
    kinds = []
    for path, doc in kubernetes_documents():
        kinds.append(doc["kind"])
        if doc["kind"] in kuberay_validators:
            errors = sorted(
                kuberay_validators[doc["kind"]].iter_errors(doc), key=lambda e: list(e.absolute_path)
            )
            assert not errors, f"{path}: " + "; ".join(
                f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
            )
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] in ("ConfigMap", "Namespace"), (
                f"{path}: {doc['kind']}"
            )
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 1


def test_kuberay_schema_rejects_what_the_operator_would(kuberay_validators) -> None:
    cluster = next(doc for _, doc in kubernetes_documents() if doc["kind"] == "RayCluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    del broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo of maxReplicas
    broken["apiVersion"] = "ray.io/v1alpha1"
    messages = " | ".join(e.message for e in kuberay_validators["RayCluster"].iter_errors(broken))
    for expected in (
        "0 is not of type 'string'",
        "'image' is a required property",
        "'maxReplica' was unexpected",
        "'ray.io/v1' was expected",
    ):
        assert expected in messages


def test_gpu_worker_groups_autoscale_within_bounds_and_request_gpus() -> None:
    cluster = next(doc for _, doc in kubernetes_documents() if doc["kind"] == "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "the head is a CPU node"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "no training work on the head"
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], (
            f"worker group {name}: need minReplicas <= replicas <= maxReplicas"
        )
        for container in group["template"]["spec"]["containers"]:
            limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
            if "nvidia.com/gpu" in limits:
                gpu_groups += 1
                assert int(limits["nvidia.com/gpu"]) >= 1
                # Extended resources cannot be overcommitted: Kubernetes rejects requests != limits.
                assert str(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == str(
                    limits["nvidia.com/gpu"]
                )
    assert gpu_groups >= 1, "the RayCluster needs a GPU worker group (nvidia.com/gpu limits)"


def test_rayjob_trains_on_the_raycluster_with_a_valid_mounted_config(tmp_path: Path) -> None:
    docs = [doc for _, doc in kubernetes_documents()]
    cluster = next(doc for doc in docs if doc["kind"] == "RayCluster")
    job = next(doc for doc in docs if doc["kind"] == "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:2] == ["cyclegan", "train"]
    config_path = Path(entrypoint[entrypoint.index("--config") + 1])
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mount = next(
        m for m in head["containers"][0]["volumeMounts"] if config_path.parent == Path(m["mountPath"])
    )
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    config_map = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    # The mounted PipelineConfig must load exactly as `cyclegan train --config` will load it.
    from pipelines.config import load_pipeline_config

    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name])
    config = load_pipeline_config(local)
    assert config.run.storage_path.startswith("s3://"), (
        "a multi-node cluster needs shared (s3://) checkpoints"
    )
    assert config.cache_dir.is_absolute(), "every node must ingest into the same absolute cache_dir"
    assert config.scaling.use_gpu


def test_kustomizations_list_existing_files() -> None:
    for kustomization in RAY_DIR.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for resource in spec["resources"]:
            assert (kustomization.parent / resource).is_file(), (
                f"{kustomization}: missing resource {resource}"
            )
        assert {image["name"] for image in spec.get("images", [])} == {PROJECT_IMAGE}


# --- Ray cluster launcher --------------------------------------------------------------------------


def test_aws_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's JSON schema + node type checks
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "the launcher needs GPU worker node types"
    for name, node_type in gpu_types.items():
        assert re.match(r"^(g5|g6|p4d|p5)\.", node_type["node_config"]["InstanceType"]), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
    for target, source in config["file_mounts"].items():
        assert (REPO / (source + ".example")).is_file(), (
            f"{LAUNCHER}: file_mounts source {source} has no .example"
        )
        assert source.split("/")[-1] in (RAY_DIR / "aws" / ".gitignore").read_text()
        assert any(target in command for command in config["head_start_ray_commands"]), (
            "env file never sourced"
        )


# --- Prefect work pools ----------------------------------------------------------------------------


def load_template(name: str) -> dict[str, Any]:
    return json.loads((PREFECT_DIR / f"{name}-pool.base-job-template.json").read_text())


@pytest.mark.parametrize("pool_type", ["process", "kubernetes"])
def test_work_pool_template_passes_prefects_validation(pool_type: str) -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.schema_tools import is_valid_schema, validate

    template = load_template(pool_type)
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    variables = template["variables"]
    is_valid_schema(variables, preprocess=False)
    defaults = {key: spec["default"] for key, spec in variables["properties"].items() if "default" in spec}
    validate(
        defaults,
        variables,
        raise_on_error=True,
        preprocess=True,
        ignore_required=True,
        allow_none_with_default=True,
    )


def test_process_template_matches_the_installed_prefect_worker() -> None:
    from prefect.workers.process import ProcessWorker

    default = ProcessWorker.get_default_base_job_template()
    template = load_template("process")
    assert template["job_configuration"] == default["job_configuration"]
    assert set(template["variables"]["properties"]) == set(default["variables"]["properties"])
    # The worker's own job configuration model accepts the template's defaults.
    defaults = {key: spec.get("default") for key, spec in template["variables"]["properties"].items()}
    config = ProcessWorker.job_configuration.model_validate({**defaults, "env": {}, "labels": {}})
    assert config.stream_output is True


def test_kubernetes_job_variables_validate_against_the_pool_template() -> None:
    from prefect.utilities.schema_tools import ValidationError, validate

    template = load_template("kubernetes")
    job_variables = yaml.safe_load((PREFECT_DIR / "kubernetes-job-variables.yaml").read_text())
    validate(
        job_variables,
        template["variables"],
        raise_on_error=True,
        preprocess=True,
        ignore_required=True,
        allow_none_with_default=True,
    )
    with pytest.raises(ValidationError, match="image_pull_policy"):
        validate(
            {**job_variables, "image_pull_policy": "Sometimes"},
            template["variables"],
            raise_on_error=True,
            preprocess=True,
            ignore_required=True,
            allow_none_with_default=True,
        )
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [
        {"secretRef": {"name": "{{ s3_credentials_secret }}"}},
        {"secretRef": {"name": "{{ ray_token_secret }}"}},
    ]


# --- one source of truth for the environment -------------------------------------------------------


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
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    found = {f"compose:{name}": set(service_env(service)) for name, service in compose["services"].items()}
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
    job_variables = yaml.safe_load((PREFECT_DIR / "kubernetes-job-variables.yaml").read_text())
    found["kubernetes-job-variables.yaml"] = set(job_variables["env"])
    found["aws/cyclegan.env.example"] = set(parse_env_file(RAY_DIR / "aws" / "cyclegan.env.example"))
    return found


def test_manifests_set_no_pipeline_variable_the_pipeline_does_not_read() -> None:
    for where, names in manifest_env_names().items():
        unknown = sorted(
            n
            for n in names
            if PIPELINE_LIKE.search(n) and n not in ENVIRONMENT and n not in SERVICE_SIDE_VARIABLES
        )
        assert not unknown, (
            f"{where} sets {unknown}: not in pipelines.config.ENVIRONMENT (add them there if "
            "the pipeline reads them, or to SERVICE_SIDE_VARIABLES if a service does)"
        )


def test_compose_worker_gets_exactly_the_pipeline_environment() -> None:
    assert manifest_env_names()["compose:prefect-worker"] == DEPLOYED_ENVIRONMENT | RAY_AUTH


def test_every_ray_process_of_the_stack_shares_one_token(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "prefect-worker"):
        env = service_env(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", f"compose {name}: RAY_AUTH_MODE must be token"
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN(:\?[^}]*)?\}", env.get("RAY_AUTH_TOKEN", "")), (
            f"compose {name}: RAY_AUTH_TOKEN must come from .env"
        )
    cluster = next(doc for _, doc in kubernetes_documents() if doc["kind"] == "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "cyclegan-ray-token"}
    job_variables = yaml.safe_load((PREFECT_DIR / "kubernetes-job-variables.yaml").read_text())
    assert job_variables["env"]["RAY_AUTH_MODE"] == "token"
    assert job_variables["ray_token_secret"] == cluster["spec"]["authOptions"]["secretName"]


def test_kuberay_pods_get_every_pipeline_variable() -> None:
    for where, names in manifest_env_names().items():
        if where.startswith("raycluster.yaml:"):
            assert DEPLOYED_ENVIRONMENT <= names, f"{where} misses {sorted(DEPLOYED_ENVIRONMENT - names)}"


def test_prefect_cluster_flow_runs_get_every_pipeline_variable() -> None:
    names = manifest_env_names()["kubernetes-job-variables.yaml"] | S3_CREDENTIAL_KEYS | {"RAY_AUTH_TOKEN"}
    assert names == DEPLOYED_ENVIRONMENT | RAY_AUTH
    assert not (manifest_env_names()["kubernetes-job-variables.yaml"] & S3_CREDENTIAL_KEYS), (
        "credentials in job vars"
    )


def test_aws_launcher_env_is_the_pipeline_environment_minus_keys_and_endpoint() -> None:
    names = manifest_env_names()["aws/cyclegan.env.example"]
    assert names == (DEPLOYED_ENVIRONMENT | RAY_AUTH) - S3_CREDENTIAL_KEYS - {"AWS_ENDPOINT_URL"}
    values = parse_env_file(RAY_DIR / "aws" / "cyclegan.env.example")
    assert "change-me" in values["RAY_AUTH_TOKEN"], "the example holds a placeholder, never a token"


# --- documentation ---------------------------------------------------------------------------------


def test_readme_documents_every_variable_and_names_existing_files() -> None:
    text = README.read_text()
    for name in ENVIRONMENT:
        assert f"`{name}`" in text, f"{README} does not document {name}"
    for path in sorted(set(re.findall(r"\binfra/[A-Za-z0-9_./-]+[A-Za-z0-9_]", text))):
        assert (REPO / path).exists() or (REPO / (path + ".example")).exists(), (
            f"{README} names missing {path}"
        )
    secrets = {
        match.group(1): set(re.findall(r"--from-literal=([A-Za-z_]+)=", match.group(2)))
        for match in re.finditer(r"create secret generic ([a-z0-9-]+)(.*)", text)
    }
    assert secrets.get("cyclegan-s3-credentials") == S3_CREDENTIAL_KEYS, f"{README}: the S3 Secret's keys"
    # KubeRay reads auth_token; the Prefect flow-run pods load RAY_AUTH_TOKEN from the same Secret.
    assert secrets.get("cyclegan-ray-token") == {"auth_token", "RAY_AUTH_TOKEN"}, (
        f"{README}: the Ray token Secret"
    )
    # Every Secret key a pod reads is one the README's commands create.
    for _, doc in kubernetes_documents():
        for where, container in pod_containers(doc):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), (
                        f"{where}: {ref} is not created in {README}"
                    )
