"""UnpairedDataset, build_dataloader and the pre-decoded cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cyclegan_core.data.dataset as data_module
from cyclegan_core.config import DataConfig
from cyclegan_core.data.cache import fresh_cache_array, write_decoded_cache
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.data.images import decode_image
from cyclegan_core.data.transforms import resize_square, round_to_multiple, to_float_chw


def noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture()
def uneven_dataset(tmp_path: Path) -> Path:
    """trainA: 5 images 42x30, trainB: 3 images 30x42; testA/testB: 2 each (PNG, noise)."""
    rng = np.random.default_rng(0)
    layout = {"trainA": (5, 42, 30), "trainB": (3, 30, 42), "testA": (2, 42, 30), "testB": (2, 42, 30)}
    for split, (count, width, height) in layout.items():
        (tmp_path / split).mkdir()
        for i in range(count):
            noise_image(rng, width, height).save(tmp_path / split / f"{split}_{i}.png")
    return tmp_path


def config(**overrides: object) -> DataConfig:
    return DataConfig(**{"load_size": 36, "crop_size": 32, **overrides})


def test_length_is_the_larger_domain_and_A_cycles(uneven_dataset: Path) -> None:
    dataset = UnpairedDataset(uneven_dataset, config())
    assert len(dataset) == 5
    assert [Path(dataset[i]["A_path"]).name for i in range(5)] == [f"trainA_{i}.png" for i in range(5)]
    limited = UnpairedDataset(uneven_dataset, config(max_images=2))
    assert len(limited) == 2 and {Path(limited[i]["B_path"]).name for i in range(2)} <= {
        "trainB_0.png",
        "trainB_1.png",
    }


def test_item_layout_and_range(synthetic_dataset: Path) -> None:
    item = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24))[0]
    assert set(item) == {"A", "B", "A_path", "B_path"}
    assert item["A"].shape == item["B"].shape == (3, 24, 24) and item["A"].dtype == torch.float32
    assert -1.0 <= float(item["A"].min()) and float(item["A"].max()) <= 1.0


def test_B_is_random_but_reproducible_per_seed_epoch_index(synthetic_dataset: Path) -> None:
    dataset = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24), seed=3)
    partners = [dataset[(i, 0)]["B_path"] for i in range(24)]
    serial = [str(p) for p in dataset.domain_B.files]
    assert partners != serial and len(set(partners)) > 5
    again = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24), seed=3)
    assert [again[(i, 0)]["B_path"] for i in range(24)] == partners
    assert torch.equal(again[(4, 0)]["A"], dataset[(4, 0)]["A"])
    assert [dataset[(i, 1)]["B_path"] for i in range(24)] != partners, "a new epoch draws new partners"


@pytest.mark.parametrize(
    ("preprocess", "expected_hw"),
    [("resize_and_crop", (32, 32)), ("crop", (24, 24)), ("scale_width", (24, 24)), ("none", (32, 40))],
)
def test_preprocess_output_sizes(uneven_dataset: Path, preprocess: str, expected_hw: tuple[int, int]) -> None:
    crop = 32 if preprocess == "resize_and_crop" else 24
    dataset = UnpairedDataset(uneven_dataset, config(preprocess=preprocess, crop_size=crop))
    item = dataset[0]
    assert tuple(item["A"].shape[1:]) == expected_hw  # A images are 42 x 30
    if preprocess == "none":
        assert tuple(item["B"].shape[1:]) == (40, 32)  # B images are 30 x 42 -> multiples of 4


def test_crop_larger_than_image_names_the_file(uneven_dataset: Path) -> None:
    dataset = UnpairedDataset(uneven_dataset, config(preprocess="crop", crop_size=31))
    with pytest.raises(ValueError, match=r"trainA_0\.png.*crop_size=31"):
        dataset[0]


def test_test_phase_is_deterministic_serial_and_unflipped(uneven_dataset: Path) -> None:
    dataset = UnpairedDataset(uneven_dataset, config(), phase="test")
    assert torch.equal(dataset[(1, 0)]["A"], dataset[(1, 7)]["A"])
    assert Path(dataset[1]["B_path"]).name == "testB_1.png"
    # official test options: resize straight to crop_size, no crop, no flip
    expected = resize_square(decode_image(uneven_dataset / "testA" / "testA_1.png"), 32)
    assert torch.equal(dataset[1]["A"], to_float_chw(expected))


def test_flip_happens_in_training_only_when_enabled(uneven_dataset: Path) -> None:
    def flipped_count(cfg: DataConfig) -> int:
        dataset = UnpairedDataset(uneven_dataset, cfg)
        count = 0
        for epoch in range(8):
            item = dataset[(0, epoch)]["A"]
            source = to_float_chw(
                round_to_multiple(decode_image(dataset.domain_A.files[0]))
            )
            count += int(torch.equal(item, source.flip(-1)))
            assert torch.equal(item, source) or torch.equal(item, source.flip(-1))
        return count

    assert 0 < flipped_count(config(preprocess="none", flip=True)) < 8
    assert flipped_count(config(preprocess="none", flip=False)) == 0


def test_BtoA_swaps_the_folders(uneven_dataset: Path) -> None:
    dataset = UnpairedDataset(uneven_dataset, config(direction="BtoA"))
    item = dataset[0]
    assert Path(item["A_path"]).parent.name == "trainB" and Path(item["B_path"]).parent.name == "trainA"
    assert len(dataset) == 5


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "trainA").mkdir()
    with pytest.raises(FileNotFoundError, match="trainA"):
        UnpairedDataset(tmp_path, config())


def test_cache_holds_the_resized_pixels_and_skips_when_fresh(synthetic_dataset: Path) -> None:
    directory = write_decoded_cache(synthetic_dataset, load_size=36)
    arrays = {p.stem: np.load(p, mmap_mode="r") for p in directory.glob("*.npy")}
    assert set(arrays) == {"trainA", "trainB", "testA", "testB", "testA_ref"}
    assert arrays["trainA"].shape == (24, 36, 36, 3) and arrays["testA_ref"].shape == (6, 36, 36, 3)
    first = min((synthetic_dataset / "trainB").iterdir())
    assert np.array_equal(arrays["trainB"][0], resize_square(decode_image(first), 36))
    written = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert "index.json" in written
    write_decoded_cache(synthetic_dataset, load_size=36)
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == written, "nothing rewritten"
    assert not [p for p in directory.iterdir() if "tmp" in p.name], "no temp files left behind"


def test_cached_items_need_no_decoding_and_equal_the_file_path(
    synthetic_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(load_size=36, crop_size=28)
    from_files = UnpairedDataset(synthetic_dataset, cfg.model_copy(update={"use_cache": False}), seed=5)
    expected = [from_files[(i, 2)] for i in (0, 7, 23)]
    write_decoded_cache(synthetic_dataset, load_size=36)

    def no_decoding(path: object) -> None:
        raise AssertionError(f"decoded {path} although the cache is fresh")

    monkeypatch.setattr(data_module, "decode_image", no_decoding)
    cached = UnpairedDataset(synthetic_dataset, cfg, seed=5)
    assert cached.uses_cache
    for key, want in zip(((0, 2), (7, 2), (23, 2)), expected, strict=True):
        got = cached[key]
        assert got["B_path"] == want["B_path"]
        assert torch.equal(got["A"], want["A"]) and torch.equal(got["B"], want["B"])


def test_cache_is_ignored_for_other_preprocessing_or_sizes(synthetic_dataset: Path) -> None:
    write_decoded_cache(synthetic_dataset, load_size=36)
    assert UnpairedDataset(synthetic_dataset, config(load_size=36, crop_size=28)).uses_cache
    assert not UnpairedDataset(synthetic_dataset, config(load_size=40, crop_size=28)).uses_cache
    assert not UnpairedDataset(
        synthetic_dataset, config(load_size=36, crop_size=28, preprocess="scale_width")
    ).uses_cache
    assert not UnpairedDataset(
        synthetic_dataset, config(load_size=36, crop_size=28, use_cache=False)
    ).uses_cache


def test_stale_cache_is_detected_and_refreshed(synthetic_dataset: Path) -> None:
    write_decoded_cache(synthetic_dataset, load_size=36)
    assert fresh_cache_array(synthetic_dataset, "trainA", 36) is not None
    victim = sorted((synthetic_dataset / "trainA").iterdir())[3]
    noise_image(np.random.default_rng(1), 32, 32).save(victim)
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert fresh_cache_array(synthetic_dataset, "trainA", 36) is None
    assert fresh_cache_array(synthetic_dataset, "trainB", 36) is not None, "other splits stay valid"
    assert not UnpairedDataset(synthetic_dataset, config(load_size=36, crop_size=28)).uses_cache

    (synthetic_dataset / "trainB" / "extra.png").write_bytes(
        (synthetic_dataset / "trainB" / "00000.png").read_bytes()
    )
    assert fresh_cache_array(synthetic_dataset, "trainB", 36) is None, "a new file makes the cache stale"

    write_decoded_cache(synthetic_dataset, load_size=36)
    assert fresh_cache_array(synthetic_dataset, "trainA", 36) is not None
    refreshed = np.load(synthetic_dataset / ".decoded" / "36" / "trainA.npy", mmap_mode="r")
    assert np.array_equal(refreshed[3], resize_square(decode_image(victim), 36))


def test_distributed_shards_are_disjoint_and_cover_the_epoch(synthetic_dataset: Path) -> None:
    dataset = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24))
    shards = []
    for rank in range(2):
        loader = build_dataloader(dataset, batch_size=4, rank=rank, world_size=2, seed=1)
        loader.sampler.set_epoch(3)
        shards.append([path for batch in loader for path in batch["A_path"]])
    assert len(shards[0]) == len(shards[1]) == 12
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == {str(p) for p in dataset.domain_A.files}


def test_loader_order_depends_on_seed_and_epoch_only(synthetic_dataset: Path) -> None:
    dataset = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24))

    def epoch_paths(seed: int, epoch: int, num_workers: int = 0) -> list[str]:
        loader = build_dataloader(dataset, batch_size=4, seed=seed, num_workers=num_workers)
        loader.sampler.set_epoch(epoch)
        return [path for batch in loader for path in batch["A_path"]]

    assert epoch_paths(0, 1) == epoch_paths(0, 1)
    assert epoch_paths(0, 1) != epoch_paths(0, 2)
    assert epoch_paths(0, 1) != epoch_paths(1, 1)


def test_worker_processes_deliver_identical_batches(synthetic_dataset: Path) -> None:
    dataset = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24), seed=9)

    def batches(num_workers: int) -> list[dict]:
        loader = build_dataloader(dataset, batch_size=6, seed=2, num_workers=num_workers)
        loader.sampler.set_epoch(4)
        return list(loader)

    inline, workers = batches(0), batches(2)
    assert len(inline) == len(workers) == 4
    for a, b in zip(inline, workers, strict=True):
        assert a["B_path"] == b["B_path"]
        assert torch.equal(a["A"], b["A"]) and torch.equal(a["B"], b["B"])


def test_loader_refuses_a_batch_larger_than_a_shard(synthetic_dataset: Path) -> None:
    dataset = UnpairedDataset(synthetic_dataset, config(load_size=32, crop_size=24))
    with pytest.raises(ValueError, match="batch_size=16"):
        build_dataloader(dataset, batch_size=16, world_size=2)

