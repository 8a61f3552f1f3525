"""Training-state checkpoints: save and restore a :class:`~cyclegan_core.model.CycleGAN` for exact resume.

A checkpoint is one ``torch.save`` file holding ``{"format", "version", "state", "extra"}`` where
``state`` is ``CycleGAN.state_dict()`` (4 networks, 2 optimizers, 2 schedulers, 2 image pools,
GradScaler, counters, RNG states, both configs as JSON-able dicts) and ``extra`` is the caller's small
metadata (e.g. dataset version, sampler epoch). Writes are atomic (temporary file in the same folder,
fsync, ``os.replace``); reads use ``torch.load(weights_only=True)``, so a checkpoint can hold tensors,
numbers, strings, lists and dicts only. Every failure is a :class:`CheckpointError` naming the file.

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
from cyclegan_core.config import ModelConfig, TrainConfig

if TYPE_CHECKING:
    from cyclegan_core.model import CycleGAN

CHECKPOINT_FORMAT = "cyclegan_core.checkpoint"
CHECKPOINT_VERSION = 1
_PLAIN_TYPES = (str, int, float, bool, type(None), torch.Tensor)


class CheckpointError(Exception):
    """A checkpoint file cannot be written, read, or applied to the given model."""


def _check_plain(value: Any, where: str) -> None:
    """Reject what ``torch.load(weights_only=True)`` would refuse to read back, naming the key."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} must be a str or int")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoint metadata may hold only str, int, float, bool, "
            f"None, tensors, lists and dicts (convert it, e.g. str(path))"
        )


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    model: CycleGAN, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s full training state (and ``extra``) to ``path`` atomically; returns the path."""
    path = Path(path)
    extra = dict(extra or {})
    try:
        _check_plain(extra, "extra")
    except TypeError as error:
        raise CheckpointError(f"cannot save checkpoint {path}: {error}") from error
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state": model.state_dict(),
        "extra": extra,
    }
    try:
        atomic_torch_save(payload, path)
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated payload of a checkpoint file (``state`` and ``extra``), tensors on the CPU."""
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
            f"found {found}); exported or official generator weights load with cyclegan_core.export"
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload['version']}, newer than this code's "
            f"{CHECKPOINT_VERSION}: upgrade cyclegan_core"
        )
    for key in ("state", "extra"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path} lacks its {key!r} dictionary")
    return payload


def load_checkpoint(model: CycleGAN, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore ``model`` from ``path`` for an exact resume; returns the ``extra`` saved with it."""
    payload = read_checkpoint(path)
    try:
        model.load_state_dict(payload["state"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {error}") from error
    return payload["extra"]


def read_checkpoint_config(path: str | os.PathLike[str]) -> tuple[ModelConfig, TrainConfig]:
    """The ``ModelConfig`` and ``TrainConfig`` a checkpoint was trained with (to rebuild its model)."""
    state = read_checkpoint(path)["state"]
    try:
        return ModelConfig(**state["model_config"]), TrainConfig(**state["train_config"])
    except KeyError as error:
        raise CheckpointError(f"checkpoint {path} lacks {error.args[0]!r} in its state") from error
    except ValueError as error:  # pydantic.ValidationError is a ValueError
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {error}") from error
