"""Image history pool: passthrough, filling phase, seeded swapping, checkpointable state."""

from __future__ import annotations

import pytest
import torch

from cyclegan_core.training.pool import ImagePool


def batch(*values: float) -> torch.Tensor:
    return torch.stack([torch.full((1, 2, 2), float(v)) for v in values])


def ids(images: torch.Tensor) -> list[float]:
    return [float(image[0, 0, 0]) for image in images]


def test_size_zero_returns_the_batch_itself() -> None:
    pool = ImagePool(0)
    images = batch(1, 2)
    assert pool.query(images) is images
    assert len(pool) == 0


def test_filling_phase_stores_and_returns_every_image() -> None:
    pool = ImagePool(3)
    assert ids(pool.query(batch(1, 2))) == [1, 2]
    assert len(pool) == 2
    # the third image fills the pool; the fourth already meets a full pool
    out = ids(pool.query(batch(3, 4)))
    assert out[0] == 3
    assert len(pool) == 3
    # the fourth is either returned as it is or swapped for a stored image it replaces: no image is
    # lost or duplicated between what the pool holds and what it returned
    stored = ids(pool.state_dict()["images"])
    assert sorted(stored + out[1:]) == [1.0, 2.0, 3.0, 4.0]


def test_returned_images_are_detached_copies() -> None:
    pool = ImagePool(2)
    images = batch(1, 2).requires_grad_(True)
    out = pool.query(images)
    assert not out.requires_grad
    out.add_(100)  # must not alter what the pool stored
    assert ids(pool.state_dict()["images"]) == [1, 2]


def test_full_pool_swaps_about_half_and_conserves_images() -> None:
    pool = ImagePool(4, seed=0)
    returned = ids(pool.query(batch(0, 1, 2, 3)))
    new = list(range(10, 210))
    after_full: list[float] = []
    for value in new:
        after_full += ids(pool.query(batch(value)))
    swapped = sum(r != v for r, v in zip(after_full, new, strict=True))
    assert 70 < swapped < 130  # p = 1/2 per image
    stored = ids(pool.state_dict()["images"])
    # the filling phase returned and stored 0..3; afterwards every image is returned or stored once
    inputs = [0.0, 1.0, 2.0, 3.0] * 2 + [float(v) for v in new]
    assert sorted(returned + after_full + stored) == sorted(inputs)


def test_same_seed_same_choices_different_seed_different_choices() -> None:
    def run(seed: int) -> list[float]:
        pool = ImagePool(3, seed=seed)
        return ids(torch.cat([pool.query(batch(v, v + 0.5)) for v in range(20)]))

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_state_dict_round_trip_continues_identically() -> None:
    pool = ImagePool(5, seed=3)
    for v in range(8):
        pool.query(batch(v))
    state = pool.state_dict()
    expected = [ids(pool.query(batch(100 + v))) for v in range(10)]
    restored = ImagePool(5, seed=999)
    restored.load_state_dict(state)
    assert [ids(restored.query(batch(100 + v))) for v in range(10)] == expected


def test_state_of_a_partly_filled_pool_round_trips() -> None:
    pool = ImagePool(4)
    pool.query(batch(1))
    restored = ImagePool(4)
    restored.load_state_dict(pool.state_dict())
    assert len(restored) == 1
    assert ids(restored.query(batch(2, 3))) == [2, 3]
    assert ids(restored.state_dict()["images"]) == [1, 2, 3]


def test_load_rejects_another_size() -> None:
    with pytest.raises(ValueError, match="size differs"):
        ImagePool(3).load_state_dict(ImagePool(4).state_dict())


def test_image_shape_change_is_an_error() -> None:
    pool = ImagePool(2)
    pool.query(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="one image size"):
        pool.query(torch.zeros(1, 3, 8, 8))
