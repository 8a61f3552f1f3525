"""The run-checkpoint folder Ray Train stores: write it, read it, restore a model from it.

A folder holds ``cyclegan.pt`` (the full ``cyclegan_core`` training state, rank 0), ``progress.json``
(``RunProgress``: dataset version and the epoch history, rank 0), ``samples/<direction>.png`` (the
evaluation's labelled sample grids, rank 0, when the epoch was evaluated) and ``rank<r>_pools.pt`` for
every other rank (its image pools: the one per-rank state an exact resume needs, since the global RNGs
are reseeded from (seed, epoch, rank) every epoch). Ray merges the ranks' files into one folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from ray.train import Checkpoint

from cyclegan_core.atomic import atomic_path, write_json_atomic
from cyclegan_core.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights_file,
    read_checkpoint,
    save_checkpoint,
)
from cyclegan_core.training.model import CycleGAN
from pipelines.train.progress import RunProgress

if TYPE_CHECKING:
    from PIL.Image import Image

T = TypeVar("T")

CHECKPOINT_FILE = "cyclegan.pt"
PROGRESS_FILE = "progress.json"
SAMPLES_FOLDER = "samples"


def rank_pools_file(rank: int) -> str:
    return f"rank{rank}_pools.pt"


def write_checkpoint_folder(directory: Path, model: CycleGAN, progress: RunProgress, *, rank: int,
                            samples: Mapping[str, Image] | None = None) -> None:
    """This rank's part of a checkpoint folder (see the module docstring); ``samples``: rank 0's sample
    grids by direction."""
    if rank == 0:
        save_checkpoint(model, directory / CHECKPOINT_FILE)
        write_json_atomic(directory / PROGRESS_FILE, progress.model_dump(mode="json"))
        for direction, grid in (samples or {}).items():
            (directory / SAMPLES_FOLDER).mkdir(exist_ok=True)
            with atomic_path(directory / SAMPLES_FOLDER / f"{direction}.png") as tmp:
                grid.save(tmp, format="PNG")
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


def read_pools(path: Path) -> dict[str, Any]:
    """A ``rank<r>_pools.pt`` file: ``{"fake_A": pool state, "fake_B": pool state}``."""
    pools = load_weights_file(path, what="checkpoint pools file")
    if not isinstance(pools, dict) or not {"fake_A", "fake_B"} <= set(pools):
        raise CheckpointError(f"checkpoint pools file {path} lacks the fake_A/fake_B pools")
    return pools


def restore_from_folder(model: CycleGAN, directory: Path, *, rank: int) -> RunProgress:
    """Load a checkpoint folder into ``model`` (and this rank's pools when the folder has them: a run
    resumed with more workers starts those ranks' pools from rank 0's); returns its progress."""
    progress = read_progress(directory)
    load_checkpoint(model, directory / CHECKPOINT_FILE)
    pools_path = directory / rank_pools_file(rank)
    if rank and pools_path.is_file():
        pools = read_pools(pools_path)
        try:
            model.fake_A_pool.load_state_dict(pools["fake_A"])
            model.fake_B_pool.load_state_dict(pools["fake_B"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint pools file {pools_path} does not fit this model: {exc}") from exc
    return progress


def check_folder(directory: Path) -> RunProgress:
    """Read every file of a checkpoint folder as a resume would (``weights_only``), without a model:
    the progress, the training state and the pools of every rank the run had (its last epoch's
    ``world_size``). Raises CheckpointError naming the first file that does not load."""
    progress = read_progress(directory)
    read_checkpoint(directory / CHECKPOINT_FILE)
    world_size = int(progress.history[-1].get("world_size", 1)) if progress.history else 1
    for rank in range(1, world_size):
        read_pools(directory / rank_pools_file(rank))
    return progress


def read_in_checkpoint(checkpoint: Checkpoint, read: Callable[[Path], T]) -> T:
    """``read(folder)`` on a reported checkpoint (downloaded first when it is remote); a CheckpointError
    names the file by its place in the checkpoint's storage, not by the temporary download folder."""
    fs = checkpoint.filesystem
    where = checkpoint.path if fs is None or fs.type_name == "local" else f"{fs.type_name}://{checkpoint.path}"
    with checkpoint.as_directory() as directory:
        try:
            return read(Path(directory))
        except CheckpointError as exc:
            raise CheckpointError(str(exc).replace(str(directory), where)) from exc
