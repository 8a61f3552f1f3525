"""Training-state checkpoints: save and restore a :class:`~cyclegan_core.training.model.CycleGAN` for exact resume.

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
    from cyclegan_core.training.model import CycleGAN

CHECKPOINT_FORMAT = "cyclegan_core.checkpoint"  # the files' format name, not the module path: older files still load
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


def torch_reason(error: BaseException, *, limit: int = 200) -> str:
    """The informative line of a ``torch.load`` error, short: torch's messages run to a paragraph of
    advice, and a message that Ray or a log truncates must keep the file name in front of it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError) and len(lines) > 1:
        lines = lines[1:]  # line 0 is the "Weights only load failed ..." preamble, line 1 the global
    reason = lines[0].split(". ")[0] if lines else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def load_weights_file(path: str | os.PathLike[str], *, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; every failure is a CheckpointError that
    starts with ``what`` and the file name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): an interrupted copy?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{what} {path} holds objects that weights_only loading refuses ({torch_reason(error)}): "
            "not a file this code wrote"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({torch_reason(error)})") from error


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated payload of a checkpoint file (its ``state`` dict), tensors on the CPU."""
    path = Path(path)
    payload = load_weights_file(path)
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

