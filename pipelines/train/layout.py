"""The run-checkpoint folder Ray Train stores: write it, read it, restore a model from it.

A folder holds ``cyclegan.pt`` (the full ``cyclegan_core`` training state, rank 0), ``progress.json``
(``RunProgress``: dataset version and the epoch history, rank 0) and ``rank<r>_pools.pt`` for every
other rank (its image pools: the one per-rank state an exact resume needs, since the global RNGs are
reseeded from (seed, epoch, rank) every epoch). Ray merges the ranks' files into one folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ray.train import Checkpoint

from cyclegan_core.atomic import atomic_path, write_json_atomic
from cyclegan_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cyclegan_core.model import CycleGAN
from pipelines.train.progress import RunProgress

CHECKPOINT_FILE = "cyclegan.pt"
PROGRESS_FILE = "progress.json"


def rank_pools_file(rank: int) -> str:
    return f"rank{rank}_pools.pt"


def write_checkpoint_folder(directory: Path, model: CycleGAN, progress: RunProgress, *, rank: int) -> None:
    """This rank's part of a checkpoint folder (see the module docstring)."""
    if rank == 0:
        save_checkpoint(model, directory / CHECKPOINT_FILE)
        write_json_atomic(directory / PROGRESS_FILE, progress.model_dump(mode="json"))
    else:
        pools = {"fake_A": model.fake_A_pool.state_dict(), "fake_B": model.fake_B_pool.state_dict()}
        with atomic_path(directory / rank_pools_file(rank)) as tmp:
            torch.save(pools, tmp)


def parse_progress(text: str, where: str) -> RunProgress:
    try:
        return RunProgress.model_validate(json.loads(text))
    except ValueError as exc:  # json and pydantic errors
        raise CheckpointError(f"checkpoint progress file {where} is unreadable: {exc}") from exc


def read_progress(directory: Path) -> RunProgress:
    """The ``progress.json`` of a local checkpoint folder."""
    path = directory / PROGRESS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise CheckpointError(f"checkpoint progress file {path} is missing or unreadable: {exc}") from exc
    return parse_progress(text, str(path))


def read_progress_in_place(checkpoint: Checkpoint) -> RunProgress:
    """``progress.json`` of a reported checkpoint, read on its filesystem (no download of the weights)."""
    path = f"{checkpoint.path}/{PROGRESS_FILE}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
    except OSError as exc:
        raise CheckpointError(f"checkpoint progress file {path} is missing or unreadable: {exc}") from exc
    return parse_progress(text, path)


def restore_from_folder(model: CycleGAN, directory: Path, *, rank: int) -> RunProgress:
    """Load a checkpoint folder into ``model`` (and this rank's pools when the folder has them: a run
    resumed with more workers starts those ranks' pools from rank 0's); returns its progress."""
    progress = read_progress(directory)
    load_checkpoint(model, directory / CHECKPOINT_FILE)
    pools_path = directory / rank_pools_file(rank)
    if rank and pools_path.is_file():
        pools = torch.load(pools_path, map_location="cpu", weights_only=True)
        model.fake_A_pool.load_state_dict(pools["fake_A"])
        model.fake_B_pool.load_state_dict(pools["fake_B"])
    return progress
