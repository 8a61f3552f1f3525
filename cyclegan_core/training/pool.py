"""Image history pool: the discriminators see a mix of current and past generated images.

Shrivastava et al. 2017, as used by CycleGAN (official ``util/image_pool.py``): while the pool holds
fewer than ``size`` images every new image is stored and returned; once full, each image is, with
probability 1/2, returned as is, otherwise swapped with a uniformly chosen stored image (the stored one
is returned, the new one takes its place). Decisions are per image.

The randomness comes from a CPU ``torch.Generator`` owned by the pool, so ``state_dict()`` captures
it and a resumed run makes the same choices. Decisions are drawn on the CPU, so a pool on the GPU adds
no host-device synchronisation. Under DDP each rank has its own pool.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ImagePool:
    """A buffer of up to ``size`` previously generated images; ``size=0`` disables it (passthrough)."""

    def __init__(self, size: int, *, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.num_images = 0
        self._images: Tensor | None = None  # (size, C, H, W) once the first image arrives
        self._rng = torch.Generator(device="cpu")
        self._rng.manual_seed(seed)

    def __len__(self) -> int:
        return self.num_images

    def query(self, images: Tensor) -> Tensor:
        """Return a batch the size of ``images`` drawn from the history; ``images`` are stored detached."""
        if self.size == 0:
            return images
        images = images.detach()
        self._ensure_buffer(images)
        assert self._images is not None
        returned = images.clone()
        for index in range(images.shape[0]):
            if self.num_images < self.size:
                self._images[self.num_images].copy_(images[index])
                self.num_images += 1
            elif torch.rand((), generator=self._rng).item() > 0.5:
                slot = int(torch.randint(0, self.size, (), generator=self._rng).item())
                returned[index].copy_(self._images[slot])
                self._images[slot].copy_(images[index])
        return returned

    def _ensure_buffer(self, images: Tensor) -> None:
        if images.dim() != 4:
            raise ValueError(f"ImagePool.query expects an NCHW batch, got shape {tuple(images.shape)}")
        if self._images is None:
            self._images = images.new_empty((self.size, *images.shape[1:]))
            return
        if self._images.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"ImagePool holds images of shape {tuple(self._images.shape[1:])}, "
                f"got a batch of {tuple(images.shape[1:])}; every query must use one image size"
            )
        if self._images.device != images.device or self._images.dtype != images.dtype:
            self._images = self._images.to(device=images.device, dtype=images.dtype)

    def state_dict(self) -> dict[str, Any]:
        """Size, fill level, stored images (CPU) and the RNG state: everything for an exact resume."""
        stored = self._images[: self.num_images].detach().cpu().clone() if self._images is not None else None
        return {
            "size": self.size,
            "num_images": self.num_images,
            "images": stored,
            "rng_state": self._rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; the sizes must agree."""
        missing = {"size", "num_images", "images", "rng_state"} - set(state)
        if missing:
            raise ValueError(f"image pool state lacks {sorted(missing)}")
        if int(state["size"]) != self.size:
            raise ValueError(f"image pool size differs: state has {state['size']}, this pool {self.size}")
        stored: Tensor | None = state["images"]
        num_images = int(state["num_images"])
        if num_images > 0 and (stored is None or stored.shape[0] != num_images):
            raise ValueError(
                f"image pool state claims {num_images} images but holds "
                f"{0 if stored is None else stored.shape[0]}"
            )
        if stored is None or num_images == 0:
            self._images = None
        else:
            device = self._images.device if self._images is not None else stored.device
            self._images = stored.new_empty((self.size, *stored.shape[1:]), device=device)
            self._images[:num_images].copy_(stored)
        self.num_images = num_images
        self._rng.set_state(state["rng_state"])
