"""The ``cyclegan`` command line: one sub-command per pipeline stage plus the library's tools.

Each command is a thin wrapper: it parses options, resolves config and services once, calls a plain
function of ``cyclegan_core`` or ``pipelines`` and prints a summary (``--json``: the last line,
machine-readable). Heavy imports happen inside commands so ``cyclegan --help`` stays fast.
"""

from pipelines.cli import data, training, models, translate, export, flows, promotion, serving  # noqa: F401, I001  (registers the commands; --help order)
from pipelines.cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
