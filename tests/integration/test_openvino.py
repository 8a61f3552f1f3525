"""The OpenVINO backend on real OpenVINO and NNCF: fp32 reproduces PyTorch fp32, bf16 stays within 40 dB,
the converted model is cached (reused, rebuilt when corrupt), OpenVINO failures fall back to torch with
one warning, large images are tiled through OpenVINO, int8 keeps the task metric of a trained model, and
no usage telemetry is sent."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.images import decode_image, list_images
from cyclegan_core.data.synthetic import make_synthetic_dataset, render_scene, synthetic_mapping
from cyclegan_core.evaluation.metrics import psnr
from cyclegan_core.inference.backends import load_translator, training_precision
from cyclegan_core.inference.backends import openvino_runtime as ov_runtime
from cyclegan_core.inference.backends.decision import decision_path
from cyclegan_core.inference.backends.host import this_host
from cyclegan_core.inference.backends.openvino_runtime import OpenVinoTranslator
from cyclegan_core.inference.memory import forward_bytes
from cyclegan_core.inference.pretrained import swapped_channels
from cyclegan_core.inference.translator import Translator, pil_to_tensor
from cyclegan_core.networks import generator_from_config
from pipelines.cli import app
from tests.integration.test_onnx import tiny_generator

# max |OpenVINO fp32 - PyTorch fp32| in the [-1, 1] output range the issue allows; measured here (ngf 4): 2.9e-6
# resnet_6blocks, 3.2e-6 resnet_unet_adalin, 2.4e-5 unet_128 (int8 on the demo model: 19.174 -> 19.163 dB)
PARITY_BOUND = 1e-4
SIZES = ((32, 32), (48, 80), (100, 60))  # H x W; 100 x 60 is padded to the size multiple and cropped back
DEMO = ModelConfig(generator="resnet_6blocks", ngf=16, ndf=16)  # the demo's generators (pipelines/flows/demo.py)
MiB = 2**20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(generator="resnet_6blocks", ngf=8)
    folder = tmp_path_factory.mktemp("ov-model") / "model"
    return Translator(tiny_generator(cfg, 1), tiny_generator(swapped_channels(cfg), 2), cfg).save_pretrained(folder)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo's generator architecture trained on the demo's synthetic task, (model folder, dataset).

    Trained supervised on (trainA, f(trainA)) pairs for speed (seconds, where the demo's CycleGAN training
    takes a minute on Ray); the int8 figure of the demo's own CycleGAN-trained model is in
    benchmarks/README.md "CPU inference"."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("demo-data") / "synthetic", size=32, n_train=64, n_test=16,
                                  seed=0)
    images = [decode_image(path) for path in list_images(root / "trainA")]
    inputs = torch.stack([pil_to_tensor(image) for image in images])
    targets = torch.stack([pil_to_tensor(synthetic_mapping(image)) for image in images])
    torch.manual_seed(0)
    net = generator_from_config(DEMO)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(60):
        batch = slice(8 * step % 64, 8 * step % 64 + 8)
        loss = (net(inputs[batch]) - targets[batch]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = Translator(net.eval(), None, DEMO).save_pretrained(tmp_path_factory.mktemp("demo-model") / "G_AB")
    return folder, root


def paired_psnr(translator: object, root: Path) -> float:
    """Mean PSNR of G_AB(testA) against testA_ref (the demo's task metric) through ``translator``'s PIL call."""
    refs = list_images(root / "testA_ref")
    outputs = translator([decode_image(root / "testA" / ref.name) for ref in refs])  # type: ignore[operator]
    got = torch.stack([pil_to_tensor(image) for image in outputs])
    expected = torch.stack([pil_to_tensor(decode_image(ref)) for ref in refs])
    return float(psnr(got, expected).mean())


def load(model: Path, cache: Path, **choice: str) -> object:
    return load_translator(model, device="cpu", cache_dir=cache, **choice)


def scene(size: int, seed: int = 0) -> torch.Tensor:
    return pil_to_tensor(render_scene(np.random.default_rng(seed), size))[None]


# --- parity and quality ------------------------------------------------------------------------------


@pytest.mark.parametrize("generator", ["resnet_6blocks", "resnet_unet_adalin", "unet_128"])
def test_openvino_fp32_reproduces_pytorch_fp32(generator: str, tmp_path: Path) -> None:
    cfg = ModelConfig(generator=generator, ngf=4)
    pair = Translator(tiny_generator(cfg, 3), tiny_generator(swapped_channels(cfg), 4), cfg)
    model = pair.save_pretrained(tmp_path / "model")
    reference = Translator.from_pretrained(model, device="cpu")
    translator = load(model, tmp_path / "cache", backend="openvino", precision="fp32")
    assert isinstance(translator, OpenVinoTranslator) and translator.describe().startswith("openvino fp32")
    differences = []
    for direction in ("AtoB", "BtoA"):
        for size in SIZES:
            x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, *size)).astype(np.float32))
            got = translator.translate_tensor(x, direction=direction)
            expected = reference.translate_tensor(x, direction=direction, precision="fp32")
            assert got.shape == expected.shape
            differences.append(float((got - expected).abs().max()))
    assert max(differences) <= PARITY_BOUND, differences


def test_openvino_bf16_is_within_40_db_of_fp32(demo_model: tuple[Path, Path], backend_cache: Path) -> None:
    model, _ = demo_model
    x = scene(128)
    fp32 = Translator.from_pretrained(model, device="cpu").translate_tensor(x, precision="fp32")
    bf16 = load(model, backend_cache, backend="openvino", precision="bf16")
    assert bf16.describe().startswith("openvino bf16")  # type: ignore[attr-defined]
    assert float(psnr(bf16.translate_tensor(x), fp32).mean()) >= 40.0  # type: ignore[attr-defined]


def test_int8_on_the_demo_model_keeps_the_paired_psnr_within_0_2_db(demo_model: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    model, root = demo_model
    calibration = [decode_image(path) for path in list_images(root / "trainA")[:8]]  # the model's input domain
    int8 = load_translator(model, device="cpu", cache_dir=tmp_path, backend="openvino", precision="int8",
                           calibration=calibration)
    assert int8.describe().startswith("openvino int8")
    fp32 = Translator.from_pretrained(model, device="cpu")
    fp32.precision = "fp32"
    reference, quantized = paired_psnr(fp32, root), paired_psnr(int8, root)
    assert reference > 15.0, "the model learnt the task (identity is ~10 dB)"
    assert abs(quantized - reference) <= 0.2, (reference, quantized)


# --- the model cache -----------------------------------------------------------------------------------


class CountingConvert:
    def __init__(self) -> None:
        self.calls = 0
        self.real = ov_runtime.convert

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.real(*args, **kwargs)


def test_a_second_load_reads_the_converted_model_and_a_corrupt_entry_is_rebuilt(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    counting = CountingConvert()
    monkeypatch.setattr(ov_runtime, "convert", counting)
    x = scene(40)
    first = load(model_dir, tmp_path, backend="openvino", precision="fp32")
    assert counting.calls == 2  # G_AB and G_BA
    second = load(model_dir, tmp_path, backend="openvino", precision="fp32")
    assert counting.calls == 2, "a second load (another process, a new Ray actor) does not convert again"
    assert torch.equal(second.translate_tensor(x), first.translate_tensor(x))  # type: ignore[attr-defined]
    entries = sorted((tmp_path / "openvino").glob("fp32-*"))
    assert len(entries) == 2 and all((entry / "entry.json").is_file() for entry in entries)
    weights = entries[0] / "model.bin"
    weights.write_bytes(weights.read_bytes()[:-64] + bytes(64))  # bit rot in the weights
    with caplog.at_level(logging.WARNING):
        third = load(model_dir, tmp_path, backend="openvino", precision="fp32")
    assert counting.calls == 3 and any("corrupt or stale" in r.getMessage() for r in caplog.records)
    assert torch.equal(third.translate_tensor(x), first.translate_tensor(x))  # type: ignore[attr-defined]


def test_the_default_translate_measures_once_logs_its_choice_and_a_new_process_reuses_it(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    monkeypatch.setenv("CYCLEGAN_CACHE_DIR", str(tmp_path / "cache"))  # read by the command, its entry point
    logs = []
    for run in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            done = CliRunner().invoke(app, ["translate", "--model", str(model_dir), str(tmp_path / "in.png"),
                                            str(tmp_path / f"out{run}.png")])
        assert done.exit_code == 0, done.output
        assert "translated with " in done.output
        logs.append([record.getMessage() for record in caplog.records])
    chosen = [line for line in logs[0] if line.startswith("translating with ")]
    assert len(chosen) == 1 and "auto: fastest path within 43 dB of fp32" in chosen[0]
    assert "the worst PSNR of 4 scenes: 43 dB here keeps 40 dB at 4x the side" in chosen[0]
    assert "measured now" in chosen[0] and any(line.startswith("built the fp32 OpenVINO model") for line in logs[0])
    reused = [line for line in logs[1] if line.startswith("translating with ")]
    assert len(reused) == 1 and "read from" in reused[0]
    assert not any(line.startswith("built the") for line in logs[1]), "nothing is converted again"
    assert Image.open(tmp_path / "out1.png").size == (44, 30)


def test_backend_torch_fp32_is_the_official_computation(model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (21, 34, 3), dtype=np.uint8)).save(source)
    done = CliRunner().invoke(app, ["translate", "--model", str(model_dir), "--backend", "torch", "--precision", "fp32",
                                    str(source), str(tmp_path / "out.png")])
    assert done.exit_code == 0, done.output
    assert "torch fp32 (the official computation)" in done.output
    net = Translator.from_pretrained(model_dir, device="cpu").generator("AtoB")
    with torch.no_grad():
        expected = Translator(net, None, ModelConfig(generator="resnet_6blocks", ngf=8))([Image.open(source)],
                                                                                       precision="fp32")[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))


# --- failures fall back to torch ------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_openvino_failing_to_compile_falls_back_to_torch_with_one_warning(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("Exception from src/plugins/intel_cpu: unsupported node\nmore detail")

    monkeypatch.setattr(ov_runtime, "compile_model", broken)
    with caplog.at_level(logging.WARNING):
        translator = load(model_dir, tmp_path, backend="openvino", precision="bf16")
    assert isinstance(translator, Translator) and translator.precision == "bf16"
    assert warnings_of(caplog) == [("OpenVINO bf16 could not be set up (RuntimeError: Exception from "
                                    "src/plugins/intel_cpu: unsupported node): translating with torch bf16 instead")]
    assert "OpenVINO bf16 failed" in translator.describe()


def test_openvino_missing_leaves_auto_to_the_torch_paths(model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from cyclegan_core.inference.backends import model_cache, probe

    def missing() -> object:
        raise ImportError("No module named 'openvino'")

    for module in (probe, model_cache, ov_runtime):
        monkeypatch.setattr(module, "import_openvino", missing)
    with caplog.at_level(logging.WARNING):
        translator = load(model_dir, tmp_path)
    assert isinstance(translator, Translator) and translator.describe().startswith("torch ")
    assert len(warnings_of(caplog)) == 1 and "No module named 'openvino'" in warnings_of(caplog)[0]
    measured = decision_path(tmp_path, "translate", this_host(),
                             {"generator": "resnet_6blocks", "ngf": 8, "norm": "instance", "input_nc": 3,
                              "output_nc": 3}).read_text()
    assert '"openvino"' not in measured.replace('"openvino": "', "")  # only torch paths were timed


class FailingRequest:
    def create_infer_request(self) -> object:
        raise RuntimeError("Infer Request is busy")


def test_an_inference_failure_mid_batch_switches_to_torch_once(model_dir: Path, backend_cache: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    translator = load(model_dir, backend_cache, backend="openvino", precision="fp32")
    assert isinstance(translator, OpenVinoTranslator)
    translator._shared.compiled["AtoB"] = FailingRequest()  # the runtime breaks after loading
    images = [Image.new("RGB", (20, 12), "red"), Image.new("RGB", (16, 16), "blue"), Image.new("RGB", (20, 12))]
    with caplog.at_level(logging.WARNING):
        outputs = translator(images)
    assert [image.size for image in outputs] == [(20, 12), (16, 16), (20, 12)]
    assert len(warnings_of(caplog)) == 1 and "Infer Request is busy" in warnings_of(caplog)[0]
    expected = Translator.from_pretrained(model_dir, device="cpu")(images, precision="fp32")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(outputs, expected, strict=True))
    assert "failed" in translator.describe()


# --- large images --------------------------------------------------------------------------------------


@pytest.fixture()
def holding_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The translators read this process as holding no memory: the budget is what is free."""
    import cyclegan_core.inference.translator

    for module in (cyclegan_core.inference.translator, ov_runtime):
        monkeypatch.setattr(module, "used_bytes", lambda device: 0)


def smooth_image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([np.sin(6 * x + 4 * y + p) for p in (0.0, 2.0, 4.0)], axis=-1)
    return Image.fromarray(((pixels + 1) * 127.5).astype(np.uint8))


def test_a_large_image_is_tiled_through_openvino(demo_model: tuple[Path, Path], backend_cache: Path,
                                                  holding_nothing: None, caplog: pytest.LogCaptureFixture) -> None:
    model, _ = demo_model
    image = smooth_image(2000, 1600)
    translator = load(model, backend_cache, backend="openvino", precision="bf16")
    # the whole image's pass (~1.1 GB) does not fit; tiles do, as few with OpenVINO's ~130 MB as without
    translator.memory_budget = 1024 * MiB  # type: ignore[attr-defined]
    assert forward_bytes(DEMO, 1600, 2000) > 1024 * MiB
    with caplog.at_level(logging.INFO):
        tiled = translator([image])[0]  # type: ignore[operator]
    lines = [r.getMessage() for r in caplog.records if "tile(s)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("2000x1600 ") and lines[0].endswith("run by OpenVINO bf16 tiles")
    whole = Translator.from_pretrained(model, device="cpu")([image], precision="fp32")[0]
    mse = np.mean((np.asarray(tiled, dtype=np.float64) - np.asarray(whole, dtype=np.float64)) ** 2)
    assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) > 30.0


def test_tiles_go_to_the_pytorch_tiler_when_openvino_cannot_compile_them(
        demo_model: tuple[Path, Path], backend_cache: Path, holding_nothing: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    translator = load(demo_model[0], backend_cache, backend="openvino", precision="fp32")

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("cannot convert the frozen generator")

    monkeypatch.setattr(ov_runtime, "convert", broken)
    translator.memory_budget = 1024 * MiB  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        out = translator([smooth_image(2000, 1600)])[0]  # type: ignore[operator]
    assert out.size == (2000, 1600)
    assert any("the PyTorch tiler (fp32) runs them" in message for message in warnings_of(caplog))


def test_a_tight_budget_leaves_the_tiles_to_the_pytorch_tiler(model_dir: Path, backend_cache: Path,
                                                              holding_nothing: None,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    translator = load(model_dir, backend_cache, backend="openvino", precision="fp32")
    translator.memory_budget = 150 * MiB  # OpenVINO's ~130 MB would leave room for far more, smaller tiles
    with caplog.at_level(logging.INFO):
        out = translator([smooth_image(1200, 1000)])[0]  # type: ignore[operator]
    assert out.size == (1200, 1000)
    messages = [record.getMessage() for record in caplog.records]
    assert any("shrink the tiles: the PyTorch tiler runs them" in message for message in messages)
    assert next(m for m in messages if "tile(s)" in m).endswith("run by the PyTorch tiler (fp32)")


# --- training's auto, telemetry ------------------------------------------------------------------------


def test_training_auto_is_measured_once_per_host_and_architecture(tmp_path: Path) -> None:
    cfg = ModelConfig(generator="resnet_6blocks", ngf=4, ndf=4)
    precision, reason = training_precision(cfg, crop_size=32, batch_size=2, cache_dir=tmp_path)
    again, reused = training_precision(cfg, crop_size=32, batch_size=2, cache_dir=tmp_path)
    assert precision == again and precision in ("fp32", "bf16")
    assert "torch fp32" in reason and "torch bf16" in reason and "measured now" in reason and "read from" in reused
    assert len(list((tmp_path / "decisions").glob("train-*.json"))) == 1


def test_no_usage_telemetry_leaves_the_machine(demo_model: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from openvino_telemetry import Telemetry
    from openvino_telemetry.utils.sender import TelemetrySender

    sent: list[object] = []
    monkeypatch.setattr(TelemetrySender, "send", lambda self, *args, **kwargs: sent.append(args))
    model, root = demo_model
    calibration = [decode_image(path) for path in list_images(root / "trainA")[:2]]
    load_translator(model, device="cpu", cache_dir=tmp_path, backend="openvino", precision="int8",
                    calibration=calibration)  # converts (OpenVINO's converter) and quantizes (NNCF)
    assert sent == []
    instance = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    assert instance is None or instance.consent is False


def test_compiled_models_dropped_in_any_order_leave_signals_working(tmp_path: Path) -> None:
    """OpenVINO's CPU plugin swaps the thread's signal stack per compiled model (libraries.py); dropping the
    first of two models first used to leave an unmapped one behind, and the next handled signal killed the
    process (SIGSEGV). Run in a child: that failure would take the test runner down with it."""
    script = (
        "import gc, os, signal, time\n"
        "from cyclegan_core.inference.backends.openvino_runtime import compile_model, convert\n"
        "from cyclegan_core.networks import build_generator\n"
        "signal.signal(signal.SIGUSR1, lambda *_: print('handled', flush=True))\n"
        "model = convert(build_generator('resnet_6blocks', ngf=4), channels=3, multiple=4)\n"
        "first, second = compile_model(model, 'bf16', 1), compile_model(model, 'fp32', 1)\n"
        "del first; gc.collect(); del second; gc.collect()\n"
        "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2); print('alive')\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["handled", "alive"]
