"""The synthetic domain pair: determinism, the documented mapping f, unpairedness, difficulty."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan_core.data import synthetic
from cyclegan_core.data.synthetic import identity_psnr, make_synthetic_dataset, synthetic_mapping


def digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_layout_counts_and_sizes(synthetic_dataset: Path) -> None:
    counts = {
        split: len(list((synthetic_dataset / split).glob("*.png")))
        for split in ("trainA", "trainB", "testA", "testB", "testA_ref")
    }
    assert counts == {"trainA": 24, "trainB": 24, "testA": 6, "testB": 6, "testA_ref": 6}
    assert sorted(p.name for p in (synthetic_dataset / "testA_ref").iterdir()) == sorted(
        p.name for p in (synthetic_dataset / "testA").iterdir()
    )
    with Image.open(next((synthetic_dataset / "trainB").iterdir())) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "one", size=16, n_train=3, n_test=2, seed=7)
    second = make_synthetic_dataset(tmp_path / "two", size=16, n_train=3, n_test=2, seed=7)
    other = make_synthetic_dataset(tmp_path / "three", size=16, n_train=3, n_test=2, seed=8)
    assert digest(first) == digest(second)
    assert digest(first)["trainA/00000.png"] != digest(other)["trainA/00000.png"]


def test_reference_is_f_of_testA(synthetic_dataset: Path) -> None:
    for path in sorted((synthetic_dataset / "testA").glob("*.png")):
        with Image.open(path) as scene:
            expected = np.asarray(synthetic_mapping(scene), dtype=np.int16)
        assert np.array_equal(expected, pixels(synthetic_dataset / "testA_ref" / path.name))


def test_mapping_formula_on_known_pixels() -> None:
    colours = np.array([[[200, 150, 100], [90, 120, 200], [77, 77, 77], [255, 255, 0]]], dtype=np.uint8)
    mapped = np.asarray(synthetic_mapping(Image.fromarray(colours, mode="RGB")))
    # warm (r >= g >= b) -> (b, r + b - g, r); cool and grey unchanged
    assert mapped.tolist() == [[[100, 150, 200], [90, 120, 200], [77, 77, 77], [0, 0, 255]]]


def test_domains_occupy_the_documented_colour_bands(synthetic_dataset: Path) -> None:
    for path in (synthetic_dataset / "trainA").glob("*.png"):
        rgb = pixels(path)
        assert ((rgb[..., 0] >= rgb[..., 1]) & (rgb[..., 1] >= rgb[..., 2])).all(), path
    for path in (synthetic_dataset / "trainB").glob("*.png"):
        rgb = pixels(path)
        assert ((rgb[..., 2] >= rgb[..., 1]) & (rgb[..., 1] >= rgb[..., 0])).all(), path
        # f is the identity on domain B: the CycleGAN identity loss agrees with the ground truth
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(synthetic_mapping(image), dtype=np.int16), rgb)


def test_domain_B_scenes_are_not_f_of_any_A_scene(synthetic_dataset: Path) -> None:
    mapped_A = {
        synthetic_mapping(Image.open(p)).tobytes() for p in (synthetic_dataset / "trainA").glob("*.png")
    }
    images_B = {Image.open(p).convert("RGB").tobytes() for p in (synthetic_dataset / "trainB").glob("*.png")}
    assert not mapped_A & images_B


def test_identity_baseline_is_far_from_the_reference(synthetic_dataset: Path) -> None:
    # measured: 9.6 dB at size 32 / seed 0, 9.8 dB at the 64 px defaults (400 / 50 images)
    score = identity_psnr(synthetic_dataset)
    assert 7.0 < score < 13.0
    recorded = json.loads((synthetic_dataset / "synthetic.json").read_text())
    assert recorded["identity_psnr_testA_ref_db"] == pytest.approx(score, abs=1e-3)


def test_mapping_is_documented() -> None:
    doc = synthetic.__doc__ or ""
    assert "f(r, g, b) = (b, r + b - g, r)   if r >= g >= b" in doc
    assert "otherwise" in doc and "testA_ref" in doc


def test_refuses_non_empty_destination_unless_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(dest, size=16, n_train=2, n_test=1)
    assert (dest / "keep.txt").exists()
    make_synthetic_dataset(dest, size=16, n_train=2, n_test=1, overwrite=True)
    assert not (dest / "keep.txt").exists() and (dest / "trainA" / "00001.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "no temp folders left behind"


def test_cli_synth_writes_the_dataset_and_prints_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    dest = tmp_path / "cli"
    args = ["synth", str(dest), "--size", "16", "--train", "2", "--test", "1", "--seed", "4", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["root"] == str(dest.resolve()) and summary["identity_psnr_db"] < 13
    assert (dest / "testA_ref" / "00000.png").exists()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 4 and "--overwrite"  # ExitCode.REFUSED in again.output
