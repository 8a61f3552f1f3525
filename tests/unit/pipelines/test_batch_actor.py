"""The batch job's actor in this process, between local folders: an image over the memory budget goes
through the tiled path, and one the budget cannot translate even by tiles fails alone (retried next run)
while the rest of its batch is translated."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.memory import forward_bytes
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator
from pipelines.batch.planning import ModelIdentity, WorkItem
from pipelines.batch.ray_job import ActorSpec, TranslateActor, load_model_files
from pipelines.batch.stores import parse_location

TINY = ModelConfig(generator="resnet_6blocks", ngf=4, norm="instance")
SMALL, LARGE = (24, 20), (1200, 1000)  # width, height
MiB = 2**20


def png(size: tuple[int, int], seed: int) -> bytes:
    """A smooth picture (what tiles with thumbnail statistics are made for), different per seed."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    pixels = np.stack([np.sin(6 * x + 4 * y + p) for p in phase], axis=-1)
    pixels = ((pixels + 1) * 127.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    nets = [build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm) for _ in range(2)]
    return Translator(nets[0], nets[1], TINY).save_pretrained(tmp_path_factory.mktemp("model") / "generators")


def actor(tmp_path: Path, model_dir: Path, memory_budget: int | None = None) -> TranslateActor:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "small.png").write_bytes(png(SMALL, 1))
    (tmp_path / "in" / "large.png").write_bytes(png(LARGE, 2))
    spec = ActorSpec(source=parse_location(str(tmp_path / "in")), root=parse_location(str(tmp_path / "out")),
                     model=ModelIdentity(name="tiny", version="1", uri=str(model_dir), resolved_uri=str(model_dir)),
                     direction="AtoB", batch_size=2, memory_budget=memory_budget, device="cpu", threads=1,
                     backend="torch", precision="fp32")  # OpenVINO's tiles: tests/integration/test_openvino.py
    return TranslateActor(load_model_files(model_dir), spec)


def items() -> list[WorkItem]:
    return [WorkItem(source=name, etag=name, size=1, output=f"{name}") for name in ("small.png", "large.png")]


def whole(model_dir: Path, name: str, tmp_path: Path) -> np.ndarray:
    image = Image.open(tmp_path / "in" / name).convert("RGB")
    return np.asarray(Translator.from_pretrained(model_dir, device="cpu")([image])[0])


@pytest.fixture()
def holding_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The translator reads this process as holding no memory: the whole budget is what is free (this
    process's resident set moves with the tests before, which would move the budget's meaning)."""
    import cyclegan_core.inference.translator

    monkeypatch.setattr(cyclegan_core.inference.translator, "used_bytes", lambda device: 0)


def test_an_image_over_the_budget_is_translated_by_tiles_and_the_rest_whole(
        tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture, holding_nothing: None) -> None:
    assert actor(tmp_path, model_dir, 123).translator.memory_budget == 123
    translate = actor(tmp_path, model_dir)
    # 150 MiB free: the small image's pass (64 MiB) fits, the large one's (~200 MiB) does not, tiles of
    # a few hundred px do.
    assert forward_bytes(TINY, *SMALL[::-1]) < 150 * MiB < forward_bytes(TINY, *LARGE[::-1])
    translate.translator.memory_budget = 150 * MiB
    with caplog.at_level(logging.INFO, logger="cyclegan_core.inference.translator"):
        rows = translate.translate_items(items())
    assert [row["status"] for row in rows] == ["translated", "translated"], rows
    tiled = [record.getMessage() for record in caplog.records if "tile(s)" in record.getMessage()]
    assert len(tiled) == 1 and tiled[0].startswith("1200x1000 "), tiled
    out = {name: np.asarray(Image.open(tmp_path / "out" / name)) for name in ("small.png", "large.png")}
    assert np.array_equal(out["small.png"], whole(model_dir, "small.png", tmp_path))
    reference = whole(model_dir, "large.png", tmp_path).astype(np.float64)
    assert out["large.png"].shape == reference.shape
    mse = np.mean((out["large.png"] - reference) ** 2)
    assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) > 30.0  # tiles blend into (nearly) the one-pass image


def test_an_image_the_budget_cannot_translate_fails_alone_and_is_retried_next_run(
        tmp_path: Path, model_dir: Path, holding_nothing: None) -> None:
    translate = actor(tmp_path, model_dir)
    # 80 MiB free: room for the small image's pass (64 MiB), not for the large one's smallest tile
    # (260 px and its row bands: 82 MiB, of which tiles may use 80% of what is free)
    translate.translator.memory_budget = 80 * MiB
    rows = {row["source"]: row for row in translate.translate_items(items())}
    assert rows["small.png"]["status"] == "translated"
    assert rows["large.png"]["status"] == "error"
    assert (
        rows["large.png"]["reason"].startswith("MemoryBudgetError: ")
        and "raise the budget" in rows["large.png"]["reason"]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.png"]  # nothing quarantined or half-written


def test_an_official_pth_is_shipped_as_its_file_and_keyed_by_its_sha256(tmp_path: Path) -> None:
    from cyclegan_core.inference.model_source import parse_model_source
    from pipelines.batch.job import model_identity
    from pipelines.registry.sources import FetchedModel

    torch.manual_seed(1)
    pth = tmp_path / "latest_net_G_A.pth"
    torch.save(build_generator(TINY.generator, ngf=TINY.ngf, norm=TINY.norm).state_dict(), pth)
    identity = model_identity(FetchedModel(parse_model_source(pth), pth))
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    assert (identity.name, identity.version, identity.sha256) == ("latest_net_G_A", f"sha-{digest[:12]}", digest)
    assert load_model_files(pth) == {"latest_net_G_A.pth": pth.read_bytes()}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "small.png").write_bytes(png(SMALL, 1))
    spec = ActorSpec(source=parse_location(str(tmp_path / "in")), root=parse_location(str(tmp_path / "out")),
                     model=identity, direction="BtoA", batch_size=1, memory_budget=None, device="cpu", threads=1,
                     backend="torch", precision="fp32", model_file=pth.name)
    rows = TranslateActor(load_model_files(pth), spec).translate_items(items()[:1])
    assert [row["status"] for row in rows] == ["translated"]  # one generator: used whatever the direction
    image = Image.open(tmp_path / "in" / "small.png").convert("RGB")
    expected = np.asarray(Translator.from_pretrained(pth, device="cpu")([image])[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "small.png")), expected)
