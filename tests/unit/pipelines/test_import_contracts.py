"""The import contracts of pyproject.toml ([tool.importlinter]: pipelines in layers, cyclegan_core free of
orchestration packages) hold; `make test` and `make lint` also run `lint-imports` itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_every_import_contract_is_kept():
    # A process of its own: lint-imports configures logging with dictConfig, which would silence this one's loggers.
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
