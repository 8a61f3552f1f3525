"""Run a ``cyclegan`` command, or a Ray training, that stops for good inside a write, for SIGKILL tests.

Test-only (tests/integration/test_crash_leftovers.py). ``os.replace`` is wrapped: when it is about to
move a temporary onto a file named NAME, the process writes READY (JSON: its pid and the temporary's
path) and waits for ever, with the temporary complete on disk and nothing committed. The test then
SIGKILLs it there. Production code has no hook for this; the pause is installed here only.

    python paused_writer.py NAME READY cli ARGS...            # `cyclegan ARGS...` in this process
    python paused_writer.py NAME READY export DEST            # save_pretrained of a tiny Translator
    python paused_writer.py NAME READY train CONFIG DATASET RESULT [PIDS]  # train_on_ray, paused in rank 0's worker
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclegan_core.training.fit import FitCallback
from cyclegan_core.training.model import CycleGAN


def install_pause(name: str, ready: Path) -> None:
    """Make this process block for ever in the first ``os.replace`` onto a file called ``name``."""
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == name:
            note = ready.with_name(ready.name + ".part")
            note.write_text(json.dumps({"pid": os.getpid(), "temp": str(Path(src).resolve())}))
            real_replace(note, ready)
            threading.Event().wait()
        real_replace(src, dst, *args, **kwargs)

    os.replace = replace


@dataclass(frozen=True)
class PauseInWorker(FitCallback):
    """A worker callback: rank 0's worker installs the pause once, unless a previous worker
    already paused there (READY exists), so the worker Ray restarts after the kill runs normally. With
    ``pids``, every rank-0 worker that starts appends its pid there (a test kills a later one too)."""

    name: str
    ready: Path
    pids: Path | None = None

    def on_step_end(self, model: CycleGAN, step: int) -> None:
        if model.rank != 0 or step != 1:
            return
        if self.pids is not None:
            with open(self.pids, "a") as out:
                out.write(f"{os.getpid()}\n")
        if not self.ready.exists():
            install_pause(self.name, self.ready)


def main(argv: list[str]) -> None:
    name, ready, mode, *rest = argv
    if mode == "cli":
        from pipelines.cli import app

        install_pause(name, Path(ready))
        app(args=rest, prog_name="cyclegan")
    elif mode == "export":
        from cyclegan_core.config import ModelConfig
        from cyclegan_core.inference.translator import Translator
        from cyclegan_core.networks import generator_from_config

        install_pause(name, Path(ready))
        cfg = ModelConfig(generator="resnet_6blocks", ngf=4)
        Translator(generator_from_config(cfg), generator_from_config(cfg), cfg).save_pretrained(Path(rest[0]))
    elif mode == "train":
        import logging

        from pipelines.config import load_pipeline_config, resolve
        from pipelines.records import DatasetRef
        from pipelines.train import train_on_ray

        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("pipelines").setLevel(logging.INFO)  # the driver's epoch lines, in the test's log
        config_path, dataset_path, result_path, *pids = rest
        config = resolve(load_pipeline_config(Path(config_path)))
        dataset = DatasetRef.model_validate_json(Path(dataset_path).read_text())
        hook = PauseInWorker(name, Path(ready), Path(pids[0]) if pids else None)
        result = train_on_ray(config, dataset, callbacks=[hook])
        Path(result_path).write_text(result.model_dump_json())
    else:
        raise SystemExit(f"unknown mode {mode!r}: cli, export or train")


if __name__ == "__main__":
    main(sys.argv[1:])
