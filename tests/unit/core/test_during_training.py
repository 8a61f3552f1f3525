"""Evaluation during training: in-memory scoring that leaves training bit-for-bit, the labelled grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.config import DataConfig, ModelConfig, TrainConfig
from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
from cyclegan_core.evaluation.during_training import (
    COLUMNS,
    labelled_grid,
    model_translator,
    sample_rows,
    score_model,
)
from cyclegan_core.evaluation.scoring import evaluate_translator
from cyclegan_core.inference.translator import Translator
from cyclegan_core.training.fit import EpochEnd, FitCallback, fit
from cyclegan_core.training.model import CycleGAN

# dropout and a pool: a step draws from the global RNG and the pools' own generators
MODEL = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=4, ndf=4, dropout=True)
TRAIN = TrainConfig(batch_size=2, pool_size=3, n_epochs=1, n_epochs_decay=1, seed=3)
DATA = DataConfig(preprocess="resize_and_crop", load_size=20, crop_size=16, max_images=6, num_workers=0)


def loader(root: Path) -> torch.utils.data.DataLoader:
    return build_dataloader(UnpairedDataset(root, DATA, phase="train", seed=TRAIN.seed), batch_size=2,
                            num_workers=0, seed=TRAIN.seed)


def state_of(model: CycleGAN) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value for name, net in model.nets.items() for key, value in net.state_dict().items()}


def test_training_that_evaluates_every_epoch_ends_bit_for_bit_as_training_that_does_not(
    synthetic_dataset: Path,
) -> None:
    plain = CycleGAN(MODEL, TRAIN)
    fit(plain, loader(synthetic_dataset), total_epochs=2, seed=TRAIN.seed)

    watched = CycleGAN(MODEL, TRAIN)
    scores: list[dict[str, float]] = []

    class Evaluate(FitCallback):
        def on_epoch_end(self, model: CycleGAN, end: EpochEnd) -> None:
            scores.append(score_model(model, synthetic_dataset, max_images=3).metrics)
            sample_rows(model_translator(model), synthetic_dataset, "AtoB", count=2)
            assert all(net.training for net in model.nets.values())  # train mode is back

    fit(watched, loader(synthetic_dataset), total_epochs=2, seed=TRAIN.seed, callbacks=[Evaluate()])
    assert len(scores) == 2 and scores[0] != scores[1]
    expected, got = state_of(plain), state_of(watched)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_score_model_is_the_final_evaluation_of_the_same_generators(synthetic_dataset: Path, tmp_path: Path) -> None:
    model = CycleGAN(MODEL, TRAIN)
    scored = score_model(model, synthetic_dataset, max_images=3)
    exported = Translator(model.G_AB, model.G_BA, MODEL).save_pretrained(tmp_path / "generators")
    final = evaluate_translator(Translator.from_pretrained(exported, device="cpu"), synthetic_dataset,
                                extractor=None, extractor_reason="off", max_images=3)
    assert scored.metrics == pytest.approx(final.metrics, rel=1e-6)
    assert {"psnr_AtoB", "cycle_l1_A", "cycle_l1_B"} <= scored.metrics.keys()
    assert scored.metrics["n_images_A"] == 3.0


def test_sample_rows_have_a_reference_column_where_the_split_has_references(synthetic_dataset: Path) -> None:
    translator = model_translator(CycleGAN(MODEL, TRAIN))
    labels, rows = sample_rows(translator, synthetic_dataset, "AtoB", count=2)
    assert labels == list(COLUMNS) and len(rows) == 2
    assert all(image is not None and image.size == (32, 32) for image in rows[0])
    labels, rows = sample_rows(translator, synthetic_dataset, "BtoA", count=2)  # no testB_ref/
    assert labels == ["input", "translated", "reconstructed"] and all(len(row) == 3 for row in rows)


def test_labelled_grid_lays_out_labelled_columns_of_judgeable_tiles() -> None:
    red, blue = Image.new("RGB", (16, 32), "red"), Image.new("RGB", (32, 32), "blue")
    grid = labelled_grid(["input", "translated", "reconstructed", "reference"],
                         [[red, blue, blue, None], [blue, red, red, blue]], tile=128)
    assert grid.size == (4 + 132 * 4, 22 + 4 + 132 * 2)
    header = grid.crop((0, 0, grid.width, 22)).convert("L")
    assert header.getextrema()[0] < 128  # label text is drawn
    assert grid.getpixel((4 + 64, 26 + 64)) == (255, 0, 0)  # the small image is enlarged into its tile
    assert grid.getpixel((4 + 10, 26 + 64)) == (255, 255, 255)  # ... keeping its aspect (white margins)
    assert grid.getpixel((4 + 132 * 3 + 64, 26 + 64)) == (187, 187, 187)  # a missing reference is grey
    with pytest.raises(ValueError, match="needs 4 images"):
        labelled_grid(["a", "b", "c", "d"], [[red, blue]])


def test_sample_grid_is_torchvisions_make_grid_layout_with_odd_sized_rows_resized() -> None:
    from torchvision.utils import make_grid

    from cyclegan_core.evaluation.metrics import to_unit_range
    from cyclegan_core.evaluation.scoring import sample_grid

    torch.manual_seed(0)
    rows = [tuple(torch.rand(3, 5, 7) * 2 - 1 for _ in range(3)) for _ in range(2)]
    odd = tuple(torch.rand(3, 9, 4) * 2 - 1 for _ in range(3))
    resized = [torch.nn.functional.interpolate(to_unit_range(t)[None], size=(5, 7), mode="bilinear",
                                               align_corners=False)[0] for t in odd]
    expected = make_grid(torch.stack([to_unit_range(t) for row in rows for t in row] + resized), nrow=3,
                         padding=2, pad_value=1.0)
    want = expected.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    got = sample_grid([*rows, odd])
    assert got.size == (2 + 3 * 9, 2 + 3 * 7)
    assert np.array_equal(np.asarray(got), want)
