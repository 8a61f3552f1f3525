"""File and folder translation: skips bad files, never overwrites an input, picks the direction's generator."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.files import (
    DeviceError,
    TranslateOptions,
    check_device,
    plan_translation,
    translate_path,
)
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator, generator_from_config

CFG = ModelConfig(generator="resnet_6blocks", ngf=4)
# the official computation: these tests are about files and folders, not backends (tests/integration/test_openvino.py)


def torch_fp32(**values: object) -> TranslateOptions:
    """The official computation (torch fp32) with ``values``."""
    return TranslateOptions(backend="torch", precision="fp32", **values)


def export_pair(cfg: ModelConfig, dest: Path) -> Path:
    g_ba_cfg = cfg.model_copy(update={"input_nc": cfg.output_nc, "output_nc": cfg.input_nc})
    return Translator(generator_from_config(cfg), generator_from_config(g_ba_cfg), cfg).save_pretrained(dest)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    return export_pair(CFG, tmp_path / "model")


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# --- files and folders -----------------------------------------------------------------------------


def test_folder_translation_skips_and_reports_a_corrupt_file(tmp_path: Path, model_dir: Path) -> None:
    inputs = tmp_path / "in"
    write_image(inputs / "a.png", (20, 12), seed=1)
    write_image(inputs / "b.jpg", (20, 12), seed=2)
    write_image(inputs / "c.png", (9, 15), seed=3)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (inputs / "notes.txt").write_text("not an image")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}

    summary = translate_path(model_dir, inputs, tmp_path / "out", torch_fp32(batch_size=2))

    assert summary.translated == 3
    assert [Path(s.path).name for s in summary.skipped] == ["broken.png"]
    assert summary.skipped[0].reason
    assert sorted(Path(p).name for p in summary.outputs) == ["a.png", "b.png", "c.png"]
    assert Image.open(tmp_path / "out" / "c.png").size == (9, 15)
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_direction_picks_the_generator_of_a_model_folder(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "in" / "x.png", (16, 16))
    translate_path(model_dir, source, tmp_path / "ab", torch_fp32(direction="AtoB"))
    translate_path(model_dir, source, tmp_path / "ba", torch_fp32(direction="BtoA"))
    g_ba = Translator.from_pretrained(model_dir / "G_BA", device="cpu")
    expected = g_ba([Image.open(source)])[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ba" / "x.png")), np.asarray(expected))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "ab" / "x.png")), np.asarray(expected))


def test_single_generator_folder_and_explicit_output_file(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "photo.jpg", (10, 14))
    summary = translate_path(model_dir / "G_AB", source, tmp_path / "result.png", torch_fp32())
    assert summary.outputs == [str(tmp_path / "result.png")]
    assert Image.open(tmp_path / "result.png").size == (10, 14)


def test_output_folder_equal_to_input_folder_is_refused(tmp_path: Path, model_dir: Path) -> None:
    write_image(tmp_path / "in" / "a.png", (8, 8))
    with pytest.raises(ValueError, match="refusing"):
        translate_path(model_dir, tmp_path / "in", tmp_path / "in" / ".." / "in", torch_fp32())


def test_output_file_equal_to_input_file_is_refused(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "a.png", (8, 8))
    original = source.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        translate_path(model_dir, source, source, torch_fp32())
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        translate_path(model_dir, source, tmp_path, torch_fp32())  # -> tmp_path/a.png is the input itself
    assert source.read_bytes() == original


def test_inputs_sharing_a_stem_get_distinct_outputs(tmp_path: Path, model_dir: Path) -> None:
    write_image(tmp_path / "in" / "a.jpg", (8, 8), seed=1)
    write_image(tmp_path / "in" / "a.png", (8, 8), seed=2)
    summary = translate_path(model_dir, tmp_path / "in", tmp_path / "out", torch_fp32())
    assert sorted(Path(p).name for p in summary.outputs) == ["a.jpg.png", "a.png"]


def test_missing_input_is_reported(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        translate_path(model_dir, tmp_path / "nothing", tmp_path / "out", torch_fp32())


def test_official_pth_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(build_generator("resnet_9blocks", ngf=64).state_dict(), tmp_path / "latest_net_G_A.pth")
    source = write_image(tmp_path / "in.png", (12, 12))
    summary = translate_path(tmp_path / "latest_net_G_A.pth", source, tmp_path / "out", torch_fp32(direction="BtoA"))
    assert summary.translated == 1 and Image.open(tmp_path / "out" / "in.png").size == (12, 12)


def test_a_loaded_translator_is_used_as_it_is(tmp_path: Path, model_dir: Path) -> None:
    translator = Translator.from_pretrained(model_dir, device="cpu")
    source = write_image(tmp_path / "in" / "x.png", (16, 12))
    summary = translate_path(translator, source, tmp_path / "out", TranslateOptions(direction="BtoA"))
    expected = translator([Image.open(source)], direction="BtoA")[0]
    assert summary.translated == 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), np.asarray(expected))


def test_single_channel_model_reads_and_writes_greyscale(tmp_path: Path) -> None:
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4, input_nc=1, output_nc=1)
    export_pair(cfg, tmp_path / "grey")
    source = write_image(tmp_path / "rgb.png", (8, 12))
    translate_path(tmp_path / "grey", source, tmp_path / "out", torch_fp32())
    result = Image.open(tmp_path / "out" / "rgb.png")
    assert result.mode == "L" and result.size == (8, 12)


# --- the cheap checks: device, paths, output format ----------------------------------------------------


def test_check_device_refuses_a_device_this_machine_lacks() -> None:
    with pytest.raises(DeviceError, match="no CUDA GPU on this machine; use cpu"):
        check_device("cuda", cuda_devices=0)
    with pytest.raises(DeviceError, match="sees 2 CUDA GPU"):
        check_device("cuda:2", cuda_devices=2)
    with pytest.raises(DeviceError, match="not a device name"):
        check_device("gpu", cuda_devices=0)
    with pytest.raises(DeviceError, match="no Apple MPS"):
        check_device("mps", cuda_devices=0, mps=False)
    with pytest.raises(DeviceError, match="not supported"):
        check_device("meta", cuda_devices=0)


def test_check_device_accepts_what_exists_and_defaults_to_cuda_when_there_is_one() -> None:
    assert check_device(None, cuda_devices=0) == torch.device("cpu")
    assert check_device(None, cuda_devices=1) == torch.device("cuda")
    assert check_device("cuda:1", cuda_devices=2) == torch.device("cuda:1")
    assert check_device("mps", cuda_devices=0, mps=True) == torch.device("mps")
    assert check_device("cpu", cuda_devices=0) == torch.device("cpu")


def test_paths_are_checked_before_the_model_is_loaded(tmp_path: Path) -> None:
    source = write_image(tmp_path / "a.png", (8, 8))
    (tmp_path / "file").write_text("x")
    missing_model = tmp_path / "no-such-model"
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        translate_path(missing_model, source, tmp_path / "file" / "out", torch_fp32())
    with pytest.raises(DeviceError):
        translate_path(missing_model, source, tmp_path / "out", torch_fp32(device="cuda:99"))


def test_an_input_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        plan_translation(tmp_path / "in", tmp_path / "out")


def test_a_single_output_is_written_in_the_format_of_its_extension(tmp_path: Path, model_dir: Path) -> None:
    source = write_image(tmp_path / "photo.png", (10, 14))
    for name, image_format in (("r.jpg", "JPEG"), ("r.JPEG", "JPEG"), ("r.tif", "TIFF"), ("r.bmp", "BMP")):
        summary = translate_path(model_dir, source, tmp_path / name, torch_fp32())
        assert summary.outputs == [str(tmp_path / name)]
        with Image.open(tmp_path / name) as written:
            assert written.format == image_format and written.size == (10, 14)


def test_an_output_name_with_another_extension_is_refused_and_a_plain_name_is_a_folder(tmp_path: Path) -> None:
    source = write_image(tmp_path / "photo.jpg", (8, 8))
    with pytest.raises(ValueError, match=r"'\.txt' is not an image extension"):
        plan_translation(source, tmp_path / "result.txt")
    assert plan_translation(source, tmp_path / "out").targets == {source: tmp_path / "out" / "photo.png"}
    (tmp_path / "folder.png").mkdir()  # an existing folder stays a folder, whatever its name
    assert plan_translation(source, tmp_path / "folder.png").targets == {source: tmp_path / "folder.png" / "photo.png"}
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_a_killed_translation_leaves_temporaries_the_next_one_removes(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out"
    script = ("import time; from cyclegan_core.atomic import atomic_path\n"
              f"with atomic_path({str(out / 'a.png')!r}) as tmp:\n    print(tmp, flush=True); time.sleep(300)")
    # holds an output's temporary, as a translate killed mid-write would
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    left = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert left.exists() and left.parent == out
    write_image(tmp_path / "in" / "a.png", (8, 8))
    translate_path(model_dir, tmp_path / "in", out, torch_fp32())
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
