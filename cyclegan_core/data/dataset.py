"""Unpaired image dataset and its DataLoader (single process or DDP-sharded).

``UnpairedDataset`` follows the official CycleGAN ``UnalignedDataset``: item ``i`` pairs ``A[i % |A|]``
with a RANDOM ``B`` (serial ``B[i % |B|]`` in the test phase), preprocessed with the official option
names (``resize_and_crop``, ``crop``, ``scale_width``, ``none``) and random horizontal flips, as float
CHW tensors in [-1, 1].

Reproducibility: every random choice of an item (its B partner, crop offsets, flips) comes from a
generator seeded with ``(dataset seed, epoch, index)``. ``build_dataloader`` wraps the sampler so that
it hands the dataset ``(index, epoch)`` pairs; an item is therefore the same whichever worker process,
rank or world size produces it, and resuming at epoch ``e`` replays epoch ``e`` exactly (the caller
calls ``loader.sampler.set_epoch(e)`` every epoch, as with ``DistributedSampler``).

When ``DataConfig.use_cache`` is on and ``preprocess == "resize_and_crop"``, the dataset reads the
pre-decoded arrays of ``cyclegan_core.data.cache`` while they match the files on disk. The test phase
resizes straight to ``crop_size`` (official test options), so it uses a cache written with
``load_size = crop_size`` when one exists.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cyclegan_core.config import DataConfig
from cyclegan_core.data.cache import fresh_cache_array
from cyclegan_core.data.images import IMAGE_EXTENSIONS, decode_image, list_images
from cyclegan_core.data.transforms import (
    SIZE_MULTIPLE_NONE,
    crop_and_flip,
    resize_square,
    round_to_multiple,
    scale_width,
    to_float_chw,
)

Phase = Literal["train", "test"]


class _Domain:
    """The images of one folder, read either from files or from a memory-mapped cache array."""

    def __init__(self, folder: Path, files: list[Path], cache_array: Path | None) -> None:
        self.folder = folder
        self.files = files
        self.cache_array = cache_array
        # mapped now, so this process (and forked workers) read the snapshot whose freshness was checked
        self._mmap: np.ndarray | None = None if cache_array is None else np.load(cache_array, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.files)

    def cached(self, index: int) -> np.ndarray:
        if self._mmap is None:  # a pickled copy (spawned DataLoader worker) maps the file again
            self._mmap = np.load(self.cache_array, mmap_mode="r")
        return self._mmap[index]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mmap": None}


@dataclass(frozen=True)
class _Geometry:
    """Resolved preprocessing of one phase: what the resize stage does and how the crop is taken."""

    resize: Literal["square", "scale_width", "multiple", "keep"]
    resize_size: int
    crop: int | None
    random: bool  # train phase: random crop offsets and flips; test phase: centre crop, no flip


class UnpairedDataset(Dataset):
    """Unpaired A/B images of ``root/{phase}A`` and ``root/{phase}B`` (see the module docstring).

    Items are ``{"A": Tensor CHW, "B": Tensor CHW, "A_path": str, "B_path": str}``; with
    ``cfg.direction == "BtoA"`` the roles swap (``"A"`` comes from ``{phase}B``).
    """

    def __init__(
        self, root: str | os.PathLike[str], cfg: DataConfig, *, phase: Phase = "train", seed: int = 0
    ) -> None:
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        self.root = Path(root)
        self.cfg = cfg
        self.phase = phase
        self.seed = seed
        self.epoch = 0
        self.geometry = self._geometry()
        names = (f"{phase}A", f"{phase}B") if cfg.direction == "AtoB" else (f"{phase}B", f"{phase}A")
        self.domain_A = self._domain(names[0])
        self.domain_B = self._domain(names[1])

    def _geometry(self) -> _Geometry:
        cfg, train = self.cfg, self.phase == "train"
        if cfg.preprocess == "resize_and_crop":
            # official test options set load_size = crop_size: resize straight to the crop
            return _Geometry(
                "square", cfg.load_size if train else cfg.crop_size, cfg.crop_size if train else None, train
            )
        if cfg.preprocess == "crop":
            return _Geometry("keep", 0, cfg.crop_size, train)
        if cfg.preprocess == "scale_width":
            return _Geometry("scale_width", cfg.load_size, cfg.crop_size, train)
        return _Geometry("multiple", SIZE_MULTIPLE_NONE, None, train)

    def _domain(self, split: str) -> _Domain:
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"dataset folder {folder} is missing: expected {self.root}/{self.phase}A and /{self.phase}B"
            )
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
        cache = None
        if self.cfg.use_cache and self.geometry.resize == "square":
            cache = fresh_cache_array(self.root, split, self.geometry.resize_size)
        if self.cfg.max_images is not None:
            files = files[: self.cfg.max_images]
        return _Domain(folder, files, cache)

    @property
    def uses_cache(self) -> bool:
        return self.domain_A.cache_array is not None and self.domain_B.cache_array is not None

    def __len__(self) -> int:
        return max(len(self.domain_A), len(self.domain_B))

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (samplers from ``build_dataloader`` pass it explicitly)."""
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, epoch, index])
        index_A = index % len(self.domain_A)
        index_B = (
            int(rng.integers(len(self.domain_B))) if self.phase == "train" else index % len(self.domain_B)
        )
        return {
            "A": self._load(self.domain_A, index_A, rng),
            "B": self._load(self.domain_B, index_B, rng),
            "A_path": str(self.domain_A.files[index_A]),
            "B_path": str(self.domain_B.files[index_B]),
        }

    def _load(self, domain: _Domain, index: int, rng: np.random.Generator) -> torch.Tensor:
        pixels = (
            domain.cached(index) if domain.cache_array is not None else self._resized(domain.files[index])
        )
        geometry = self.geometry
        height, width = pixels.shape[:2]
        size = geometry.crop
        top = left = 0
        if size is not None:
            if size > height or size > width:
                raise ValueError(
                    f"{domain.files[index]}: image is {width}x{height} after preprocessing, smaller than "
                    f"crop_size={size}; use preprocess='resize_and_crop' or a smaller crop_size"
                )
            if geometry.random:
                top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
            else:
                top, left = (height - size) // 2, (width - size) // 2
        flip = bool(geometry.random and self.cfg.flip and rng.random() < 0.5)
        return to_float_chw(crop_and_flip(pixels, top, left, size, flip))

    def _resized(self, path: Path) -> np.ndarray:
        image = decode_image(path)
        geometry = self.geometry
        if geometry.resize == "square":
            return resize_square(image, geometry.resize_size)
        if geometry.resize == "scale_width":
            return scale_width(image, geometry.resize_size, self.cfg.crop_size)
        if geometry.resize == "multiple":
            return round_to_multiple(image, geometry.resize_size)
        return np.asarray(image, dtype=np.uint8)


# --- loading ------------------------------------------------------------------------------------


class EpochIndexSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` from a ``DistributedSampler`` so items are seeded by their epoch.

    ``set_epoch`` must be called before each epoch (it reshuffles, exactly like ``DistributedSampler``).
    """

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((index, epoch) for index in self.base)

    def __len__(self) -> int:
        return len(self.base)


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's global generators from the worker's torch seed (for user transforms)."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def build_dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader whose order and items depend only on (seed, epoch, rank, world_size).

    The sampler is a ``DistributedSampler(num_replicas=world_size, rank=rank, seed=seed)`` (with one
    replica it is a seeded per-epoch shuffle), wrapped in ``EpochIndexSampler``: call
    ``loader.sampler.set_epoch(epoch)`` at the start of every epoch. Workers are persistent when
    ``num_workers > 0``; memory is pinned when CUDA is available.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    base = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
    )
    if drop_last and len(base) < batch_size:
        size = len(dataset) if isinstance(dataset, Sized) else "?"
        raise ValueError(
            f"each of {world_size} rank(s) gets {len(base)} of the dataset's {size} items, fewer than "
            f"batch_size={batch_size}: no full batch; lower batch_size or add images"
        )
    generator = torch.Generator()
    generator.manual_seed(seed + rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochIndexSampler(base),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        worker_init_fn=_seed_worker,
        generator=generator,
    )
