"""The parsed docker-compose.yaml, for the checks that take it as a fixture."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.infra.manifests import compose_spec


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_spec()
