"""Training-state checkpoints: save and restore a :class:`~cyclegan_core.model.CycleGAN` for exact resume.

A checkpoint is one ``torch.save`` file holding ``{"format", "version", "state"}`` where ``state`` is
``CycleGAN.state_dict()`` (4 networks, 2 optimizers, 2 schedulers, 2 image pools, GradScaler, counters,
RNG states, both configs as JSON-able dicts); older files also hold an ``extra`` dict, which is ignored.
Writes are atomic (temporary file in the same folder, fsync, ``os.replace``); reads use
``torch.load(weights_only=True)``. Every failure is a :class:`CheckpointError` naming the file.

Under DDP save from one rank only (rank 0); every rank loads the same file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cyclegan_core.atomic import atomic_path

if TYPE_CHECKING:
    from cyclegan_core.model import CycleGAN

CHECKPOINT_FORMAT = "cyclegan_core.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file cannot be written, read, or applied to the given model."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(model: CycleGAN, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s full training state to ``path`` atomically; returns the path."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state": model.state_dict()}
    try:
        atomic_torch_save(payload, path)
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated payload of a checkpoint file (its ``state`` dict), tensors on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy?")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {path} holds objects that weights_only loading refuses "
            f"(not a cyclegan_core training checkpoint?): {error}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a cyclegan_core training checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {found}); exported or official generator weights load with Translator.from_pretrained"
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload['version']}, newer than this code's "
            f"{CHECKPOINT_VERSION}: upgrade cyclegan_core"
        )
    if not isinstance(payload.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} lacks its 'state' dictionary")
    return payload


def load_checkpoint(model: CycleGAN, path: str | os.PathLike[str]) -> None:
    """Restore ``model`` from ``path`` for an exact resume."""
    payload = read_checkpoint(path)
    try:
        model.load_state_dict(payload["state"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {error}") from error

