"""Every YAML and JSON file under infra/ parses; prefect.yaml deploys every flow of the pipeline."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from tests.unit.infra.manifests import REPO, infra_files, load_yaml_documents

# the deployments prefect.yaml must define, by the name of the flow they run
DEPLOYMENTS = {"train-cyclegan": {"manual", "nightly"}, "rollout-champion": {"on-promotion"},
               "translate-cyclegan": {"rollout"}}


@pytest.mark.parametrize("path", infra_files(".yaml", ".yml"), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_file_parses(path: Path) -> None:
    assert load_yaml_documents(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", infra_files(".json"), ids=lambda p: str(p.relative_to(REPO)))
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_prefect_yaml_deploys_every_flow_with_parameters_it_takes() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    found: dict[str, set[str]] = {}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        found.setdefault(flow.name, set()).add(deployment["name"])
        assert deployment["work_pool"]["name"] == "cyclegan-pool", deployment["name"]
        taken = set(inspect.signature(flow.fn).parameters)
        for parameters in [deployment.get("parameters", {})] + [
                trigger.get("parameters", {}) for trigger in deployment.get("triggers", [])]:
            assert set(parameters) <= taken, (deployment["name"], sorted(set(parameters) - taken))
    assert found == DEPLOYMENTS
