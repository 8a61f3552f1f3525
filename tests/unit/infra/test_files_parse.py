"""Every YAML and JSON file under infra/ (and prefect.yaml) parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.infra.manifests import REPO, infra_files, load_yaml_documents


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
