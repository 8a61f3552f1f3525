"""One source of truth for the environment: the variables the manifests set that the pipeline reads
are exactly ``pipelines.config.ENVIRONMENT`` (less its optional ones), checked both ways; the Ray
token is shared; infra/README.md documents every variable, file and Secret key."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.infra.manifests import (
    AWS_ENV_EXAMPLE,
    CREDENTIAL_ENVIRONMENT,
    DEPLOYED_ENVIRONMENT,
    ENVIRONMENT,
    MLFLOW_CREDENTIAL_KEYS,
    PIPELINE_LIKE,
    RAY_AUTH,
    README,
    REPO,
    S3_CREDENTIAL_KEYS,
    SERVICE_SIDE_VARIABLES,
    deployment_job_variables,
    kubernetes_documents,
    manifest_env_names,
    parse_env_file,
    pod_containers,
    ray_cluster_document,
    service_env,
)


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
    assert manifest_env_names()["compose:prefect-worker"] == DEPLOYED_ENVIRONMENT | RAY_AUTH | CREDENTIAL_ENVIRONMENT


def test_ray_nodes_get_no_mlflow_or_prefect_credentials() -> None:
    # Ray Train workers never talk to MLflow or Prefect: their credentials stay with the flow runs.
    for where, names in manifest_env_names().items():
        if where.startswith(("compose:ray-", "raycluster.yaml:", "rayjob.yaml:", "aws/", "ConfigMap ")):
            assert not names & CREDENTIAL_ENVIRONMENT, f"{where} sets {sorted(names & CREDENTIAL_ENVIRONMENT)}"


def test_every_ray_process_of_the_stack_shares_one_token(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "prefect-worker"):
        env = service_env(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", f"compose {name}: RAY_AUTH_MODE must be token"
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN(:\?[^}]*)?\}", env.get("RAY_AUTH_TOKEN", "")), (
            f"compose {name}: RAY_AUTH_TOKEN must come from .env"
        )
    cluster = ray_cluster_document()
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "cyclegan-ray-token"}
    job_variables = deployment_job_variables()
    assert job_variables["env"]["RAY_AUTH_MODE"] == "token"
    assert job_variables["ray_token_secret"] == cluster["spec"]["authOptions"]["secretName"]


def test_kuberay_pods_get_every_pipeline_variable() -> None:
    for where, names in manifest_env_names().items():
        if where.startswith("raycluster.yaml:"):
            assert DEPLOYED_ENVIRONMENT <= names, f"{where} misses {sorted(DEPLOYED_ENVIRONMENT - names)}"


def test_prefect_cluster_flow_runs_get_every_pipeline_variable() -> None:
    # From the Secrets of the template's envFrom, and PREFECT_API_AUTH_STRING from the worker's own settings.
    from_secrets = S3_CREDENTIAL_KEYS | {"RAY_AUTH_TOKEN"} | MLFLOW_CREDENTIAL_KEYS | {"PREFECT_API_AUTH_STRING"}
    names = manifest_env_names()["kubernetes-job-variables.yaml"] | from_secrets
    assert names == DEPLOYED_ENVIRONMENT | RAY_AUTH | CREDENTIAL_ENVIRONMENT
    assert not (manifest_env_names()["kubernetes-job-variables.yaml"] & from_secrets), (
        "credentials in job vars"
    )


def test_aws_launcher_env_is_the_pipeline_environment_minus_keys_and_endpoint() -> None:
    names = manifest_env_names()["aws/cyclegan.env.example"]
    assert names == (DEPLOYED_ENVIRONMENT | RAY_AUTH) - S3_CREDENTIAL_KEYS - {"AWS_ENDPOINT_URL"}
    values = parse_env_file(AWS_ENV_EXAMPLE)
    assert "change-me" in values["RAY_AUTH_TOKEN"], "the example holds a placeholder, never a token"


# --- documentation --------------------------------------------------------------------------------


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
    assert secrets.get("cyclegan-mlflow-credentials") == MLFLOW_CREDENTIAL_KEYS, f"{README}: the MLflow Secret"
    # Every Secret key a pod reads is one the README's commands create.
    for _, doc in kubernetes_documents():
        for where, container in pod_containers(doc):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), (
                        f"{where}: {ref} is not created in {README}"
                    )
