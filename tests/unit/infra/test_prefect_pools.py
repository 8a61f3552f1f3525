"""Prefect work-pool templates and the deployment's job variables, with Prefect's own server-side
validators."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.infra.manifests import deployment_job_variables, load_template


def validate_job_variables(values: dict[str, Any], variables: dict[str, Any]) -> None:
    """Validate values against a template's variables schema as Prefect does when a deployment is
    created or run; raises prefect's ValidationError."""
    from prefect.utilities.schema_tools import validate

    validate(
        values,
        variables,
        raise_on_error=True,
        preprocess=True,
        ignore_required=True,
        allow_none_with_default=True,
    )


@pytest.mark.parametrize("pool_type", ["process", "kubernetes"])
def test_work_pool_template_passes_prefects_validation(pool_type: str) -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.schema_tools import is_valid_schema

    template = load_template(pool_type)
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    variables = template["variables"]
    is_valid_schema(variables, preprocess=False)
    defaults = {key: spec["default"] for key, spec in variables["properties"].items() if "default" in spec}
    validate_job_variables(defaults, variables)


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
    from prefect.utilities.schema_tools import ValidationError

    template = load_template("kubernetes")
    job_variables = deployment_job_variables()
    validate_job_variables(job_variables, template["variables"])
    with pytest.raises(ValidationError, match="image_pull_policy"):
        validate_job_variables({**job_variables, "image_pull_policy": "Sometimes"}, template["variables"])
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [
        {"secretRef": {"name": "{{ s3_credentials_secret }}"}},
        {"secretRef": {"name": "{{ ray_token_secret }}"}},
        {"secretRef": {"name": "{{ mlflow_credentials_secret }}"}},
    ]
