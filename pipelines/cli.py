"""The ``cyclegan`` command line: one sub-command per pipeline stage plus the library's tools.

Each command is a thin wrapper: it parses options, calls a plain function of ``cyclegan_core`` or
``pipelines`` and prints a summary (``--json`` prints it as the last line, machine-readable).
Heavy imports happen inside commands so ``cyclegan --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="cyclegan",
    help="CycleGAN image-to-image translation: synthesise, ingest, train, evaluate, register, translate.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a clear error (no traceback) and exit non-zero."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def print_json(payload: Any) -> None:
    """The machine-readable summary: always the last line on stdout."""
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# --- data: synth (cyclegan_core.synthetic) -------------------------------------------------------
# (section: data)

# --- S3: upload, ingest (pipelines.ingest) -------------------------------------------------------
# (section: ingest)

# --- train (pipelines.train) ---------------------------------------------------------------------
# (section: train)

# --- evaluate (pipelines.evaluate) ---------------------------------------------------------------
# (section: evaluate)

# --- register, promote (pipelines.registry) ------------------------------------------------------
# (section: registry)

# --- translate (cyclegan_core.translate) ---------------------------------------------------------
# (section: translate)

# --- demo, run (pipelines.flows) -----------------------------------------------------------------
# (section: flows)


if __name__ == "__main__":
    app()
