"""The benchmark scripts run (tiny CPU configurations) and print the figures their README tables need.

Their real configurations need a GPU (benchmarks/gpu_suite.sh); these tests keep the scripts from
rotting between the sessions that have one.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY_STEP = ["--device", "cpu", "--generator", "resnet_6blocks", "--size", "32", "--ngf", "4", "--ndf", "4",
             "--threads", "1"]


def run_script(name: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{Path(name).stem}", BENCHMARKS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_train_step_prints_one_line_per_configuration() -> None:
    lines = run_script("train_step.py", *TINY_STEP, "--batch", "1", "2", "--steps", "2", "--warmup", "1",
                       "--precision", "fp32", "auto")
    assert [(line["batch"], line["precision"]) for line in lines[:2]] == [(1, "fp32"), (2, "fp32")]
    assert [(line["batch"], line["precision"] in ("fp32", "bf16")) for line in lines[2:]] == [(1, True), (2, True)]
    assert all(line["images_per_s"] > 0 and line["peak_mem_gib"] > 0 for line in lines)
    assert not any("official_h100_images_per_s" in line for line in lines), "not the official configuration"


def test_official_reference_figures_only_for_the_measured_configuration() -> None:
    train_step = load_script("train_step.py")
    official = train_step.parse_args(["--device", "cpu", "--size", "256"])
    assert train_step.official_reference(official, 8) == {
        "official_h100_images_per_s": 40.3, "official_h100_peak_mem_gib": 17.1}
    assert train_step.official_reference(official, 2) == {}
    assert train_step.official_reference(train_step.parse_args(["--device", "cpu", "--size", "128"]), 8) == {}


def test_profile_step_splits_the_step_into_categories() -> None:
    (line,) = run_script("profile_step.py", *TINY_STEP, "--steps", "2", "--warmup", "1", "--top", "5")
    shares = line["categories_share"]
    assert abs(sum(shares.values()) - 1) < 0.01
    assert shares["convolution"] > 0.2 and shares["optimizer"] > 0 and shares["normalization"] > 0
    assert len(line["top_ops"]) == 5 and line["profiled_ms_per_step"] > 0


def test_profile_categories() -> None:
    profile_step = load_script("profile_step.py")
    expected = {
        "aten::cudnn_convolution": "convolution",
        "aten::convolution_backward": "convolution",
        "aten::reflection_pad2d_backward": "padding",
        "aten::native_batch_norm": "normalization",
        "aten::_fused_adam_": "optimizer",
        "aten::threshold_backward": "elementwise",
        "aten::mse_loss": "reduction_loss",
        "aten::cat": "memory",
        "cudaLaunchKernel": "other",
    }
    assert {name: profile_step.category(name) for name in expected} == expected


def test_precision_quality_compares_precisions() -> None:
    lines = run_script("precision_quality.py", "--device", "cpu", "--generator", "resnet_6blocks", "--size", "32",
                       "--ngf", "4", "--ndf", "4", "--images", "4", "--test-images", "2", "--epochs", "2",
                       "--batch", "2", "--loader-workers", "0", "--precision", "fp32", "bf16")
    fp32, bf16, comparison = lines
    assert (fp32["precision"], bf16["precision"], fp32["steps"]) == ("fp32", "bf16", 4)
    assert fp32["identity_psnr"] == bf16["identity_psnr"] > 0
    assert comparison["psnr_difference"] == {"bf16": round(bf16["psnr_AtoB"] - fp32["psnr_AtoB"], 3)}


def test_ingest_benchmark_times_cold_and_unchanged_reingest() -> None:
    (line,) = run_script(
        "ingest.py", "--n", "40", "--workers", "4", "--load-size", "32", "--aws-bin", "/nonexistent/aws"
    )
    assert line["benchmark"] == "ingest" and line["images"] == line["objects"] - 1  # synthetic.json is not an image
    assert line["ingest_cold_s"] > 0 and line["ingest_cold_mb_per_s"] > 0 and line["decoded_cache_s"] > 0
    assert 0 < line["ingest_incremental_s"] and line["list_s"] > 0
    assert line["aws_sync"] == "skipped" and "does not run" in line["aws_skipped_reason"]


@pytest.mark.slow
def test_train_loop_in_process_and_through_ray(ray_local: None, tmp_path: Path) -> None:
    train_loop = load_script("train_loop.py")
    args = train_loop.parse_args(["--device", "cpu", "--generator", "resnet_6blocks", "--size", "32", "--ngf",
                                  "4", "--ndf", "4", "--images", "8", "--batch", "2", "--epochs", "2",
                                  "--loader-workers", "0"])
    root = train_loop.synthetic_dataset(tmp_path / "synthetic", size=args.image_size, images=args.images)
    written = (root / "trainA" / "00000.png").stat().st_mtime_ns
    assert train_loop.synthetic_dataset(root, size=args.image_size, images=args.images) == root
    assert (root / "trainA" / "00000.png").stat().st_mtime_ns == written, "an identical dataset is reused"
    train_loop.write_decoded_cache(root, load_size=args.load_size)

    direct = train_loop.run_in_process(args, root)
    through_ray = train_loop.run_through_ray(args, root, tmp_path)
    for result in (direct, through_ray):
        assert len(result["per_epoch_images_per_s"]) == 2 and result["images_per_s"] > 0
    assert through_ray["wall_s"] > through_ray["epoch_s_total"] > 0


def test_tiling_benchmark_compares_tiled_with_whole_and_measures_peak_rss() -> None:
    lines = run_script("tiling.py", "--generator", "resnet_6blocks", "--ngf", "4", "--size", "64", "--threads", "1",
                       "--configs", "tile:32:8", "thumbnail:32:8:2", "--rss-sizes", "96", "--budget", "4GiB")
    quality = [line for line in lines if line["kind"] == "quality"]
    memory = [line for line in lines if line["kind"] == "memory"]
    assert [line["config"] for line in quality] == ["tile:32:8", "thumbnail:32:8:2"]
    assert all(line["tiles"] == 9 and line["overlap_px"] >= 8 and line["psnr_db"] > 0 for line in quality)
    assert all(0 < line["mean_abs_error"] <= line["max_abs_error"] <= 2 for line in quality)
    assert [line["budget"] for line in memory] == ["whole image", "4GiB"]
    assert all(line["peak_rss_gib"] >= line["rss_before_gib"] > 0 and line["output"] == [96, 96] for line in memory)


def test_translate_benchmark_rates_configurations_against_fp32_eager_in_one_run() -> None:
    lines = run_script("translate.py", "--generator", "resnet_6blocks", "--ngf", "4", "--sizes", "32", "--batch", "1",
                       "2", "--repeats", "2", "--threads", "1", "--calibration", "2", "--configs", "fp32", "bf16_cl",
                       "openvino_fp32", "openvino_bf16", "openvino_int8", "auto")
    configs = ["fp32", "bf16_cl", "openvino_fp32", "openvino_bf16", "openvino_int8", "auto"]
    assert [(line["config"], line["batch"]) for line in lines] == [(c, b) for b in (1, 2) for c in configs]
    by = {(line["config"], line["batch"]): line for line in lines}
    fp32 = by[("fp32", 1)]
    assert fp32["speedup"] == fp32["speedup_paired"] == 1.0 and fp32["psnr_vs_fp32_db"] is None
    assert all(line["images_per_s"] > 0 and line["ms_per_image"] > 0 for line in lines)
    assert 30 < by[("bf16_cl", 1)]["psnr_vs_fp32_db"] < 100, "bf16 is close to fp32 but not identical"
    assert by[("openvino_fp32", 2)]["psnr_vs_fp32_db"] is None or by[("openvino_fp32", 2)]["psnr_vs_fp32_db"] > 80
    assert by[("openvino_int8", 1)]["psnr_vs_fp32_db"] > 15
    assert by[("auto", 1)]["auto_chose"].split()[0] in ("torch", "openvino")


def test_checkpoint_upload_costs_are_the_epoch_boundaries_beyond_a_step() -> None:
    upload = load_script("checkpoint_upload.py")
    times = {1: 0.0, 2: 1.0, 3: 2.0, 4: 12.0, 5: 13.0, 6: 14.0, 7: 16.5}  # 3 steps per epoch
    assert upload.boundary_costs(times, steps_per_epoch=3) == {  # the mean leaves the first boundary out
        "boundaries_s": [10.0, 2.5], "median_step_s": 1.0, "blocked_s": [9.0, 1.5], "blocked_mean_s": 1.5}
    assert upload.boundary_costs({1: 0.0, 2: 1.0, 3: 5.0, 4: 6.0}, steps_per_epoch=2)["blocked_mean_s"] == 3.0


@pytest.mark.slow
def test_checkpoint_upload_prints_the_blocked_time_of_each_configuration() -> None:
    lines = run_script("checkpoint_upload.py", "--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4",
                       "--size", "32", "--images", "2", "--epochs", "2", "--bandwidth-mb", "0", "--cpus", "1",
                       "--modes", "async")
    (line,) = lines
    assert line["config"] == "async" and len(line["blocked_s"]) == 1 and line["median_step_s"] > 0
    assert line["checkpoint_mb"] > 0 and line["fit_wall_s"] > 0 and line["steps_per_epoch"] == 2


def test_bf16_by_scene_gives_each_scene_and_size_its_psnr(tmp_path: Path) -> None:
    from cyclegan_core.config import ModelConfig
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.networks import generator_from_config

    cfg = ModelConfig(generator="resnet_6blocks", ngf=4)
    model = Translator(generator_from_config(cfg), None, cfg).save_pretrained(tmp_path / "model")
    lines = run_script("bf16_by_scene.py", "--model", str(model), "--sizes", "32", "64", "--scenes", "2")
    assert [(line["size"], line["scene"]) for line in lines] == [(32, 0), (32, 1), (64, 0), (64, 1)]
    assert all(20 < line["torch_bf16_db"] < 99 and 20 < line["openvino_bf16_db"] < 99 for line in lines)
    assert lines[0]["torch_bf16_db"] != lines[1]["torch_bf16_db"], "different scenes, different errors"


def test_forward_memory_measures_each_pass_within_the_tilers_estimate() -> None:
    lines = run_script("forward_memory.py", "--generators", "resnet_6blocks", "--ngf", "8", "--sizes", "384",
                       "--repeats", "1", "--threads", "1", "--runtimes", "torch", "openvino")
    assert [(line["runtime"], line["precision"]) for line in lines] == [
        ("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]
    torch_fp32, torch_bf16, *openvino = lines
    for line in (torch_fp32, torch_bf16):  # the tiler's plan holds: a pass takes no more than forward_bytes says
        assert 0 < line["worst_mib"] <= line["estimate_mib"], line
    assert torch_bf16["estimate_mib"] > torch_fp32["estimate_mib"], "a bf16 ResNet pass is planned larger"
    for line in openvino:  # OpenVINO's tiles are planned with the fp32 estimate at either precision
        assert 0 < line["worst_mib"] <= torch_fp32["estimate_mib"], line


def test_reference_model_trains_and_exports_a_model_translate_reads(tmp_path: Path) -> None:
    from cyclegan_core.inference.translator import Translator

    (line,) = run_script("reference_model.py", str(tmp_path), "--generator", "resnet_6blocks", "--ngf", "4",
                         "--epochs", "1", "--images", "3", "--size", "32", "--precision", "fp32")
    assert line["steps"] == 3 and line["train_s"] > 0 and set(line["last_epoch_losses"]) >= {"G_A", "cycle_A"}
    translator = Translator.from_pretrained(line["model"], device="cpu")
    assert translator.directions == ("AtoB", "BtoA") and translator.config.ngf == 4


def test_backend_quality_compares_every_backend_with_torch_fp32_on_the_task_metric(tmp_path: Path) -> None:
    from cyclegan_core.config import ModelConfig
    from cyclegan_core.data.synthetic import make_synthetic_dataset
    from cyclegan_core.inference.pretrained import swapped_channels
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.networks import generator_from_config

    cfg = ModelConfig(generator="resnet_6blocks", ngf=4)
    model = Translator(generator_from_config(cfg), generator_from_config(swapped_channels(cfg)), cfg).save_pretrained(
        tmp_path / "model")
    data = make_synthetic_dataset(tmp_path / "synthetic", size=32, n_train=4, n_test=3, seed=0)
    lines = run_script("backend_quality.py", "--model", str(model), "--data", str(data), "--calibration", "2")
    assert [(line["backend"], line["precision"]) for line in lines] == [
        ("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    assert lines[0]["vs_fp32_paired_db"] == 0 and lines[0]["output_vs_fp32_db"] is None
    assert all(line["images"] == 3 and line["paired_psnr_db"] > 0 for line in lines)
    assert lines[3]["calibration_images"] == 2


def test_serving_benchmark_registers_a_version_mlflow_can_load(tmp_path: Path) -> None:
    """The serving benchmark's throwaway registry (its servers are the slow part, left to the benchmark)."""
    import io

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from cyclegan_core.config import ModelConfig
    from pipelines.registry.pyfunc import tiny_png
    from pipelines.tracking.session import global_tracking_uri

    serving = load_script("serving.py")
    uri = serving.register(tmp_path, ModelConfig(generator="resnet_6blocks", ngf=4))
    version = MlflowClient(uri, uri).get_model_version_by_alias(serving.MODEL, "champion")
    assert str(version.version) == "1" and version.source.startswith("models:/")
    with global_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/{serving.MODEL}/1")
    (png,) = model.predict(pd.DataFrame({"image": [tiny_png()]}))["image"]
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (8, 8, 3)
