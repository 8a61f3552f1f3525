"""The evaluate stage end to end: the synthetic dataset, two tiny exported generators, a locally made
random-init Inception weights file (never a download), the `cyclegan evaluate` command, and weights
fetched from a real (moto) S3 server."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cyclegan_core.config import ModelConfig
from cyclegan_core.evaluation.scoring import same_size_batches
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import generator_from_config
from pipelines.cli import app
from pipelines.clients.inception_weights import load_feature_extractor, resolve_inception_weights
from pipelines.config import (
    EvalSettings,
    PipelineConfig,
    RegistrySettings,
    ResolvedConfig,
    resolve,
    services_from_env,
)
from pipelines.evaluate import evaluate_generators, evaluate_model
from pipelines.records import DatasetRef, EvalReport
from tests.unit.core.test_inception import write_random_inception_weights

CFG = ModelConfig(generator="resnet_6blocks", ngf=4)
IMAGES = 3  # per domain: Inception at 299 px on CPU is the cost of this file
EXPECTED_KEYS = {
    "psnr_AtoB", "ssim_AtoB", "l1_AtoB", "psnr_identity_AtoB", "ssim_identity_AtoB", "l1_identity_AtoB",
    "psnr_gain_AtoB", "cycle_l1_A", "cycle_l1_B", "fid_AtoB", "fid_BtoA", "kid_AtoB", "kid_BtoA",
    "kid_AtoB_std", "kid_BtoA_std", "n_images_A", "n_images_B",
}


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


@pytest.fixture()
def generators_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return Translator(generator_from_config(CFG), generator_from_config(CFG), CFG).save_pretrained(tmp_path / "model")


@pytest.fixture()
def no_cached_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No configured weights and an empty torch.hub cache: FID/KID must be reported as skipped."""
    monkeypatch.delenv("CYCLEGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def dataset_ref(root: Path) -> DatasetRef:
    return DatasetRef(uri=root.as_uri(), root=root, manifest=root / "manifest.json", version="local")


def pipeline_config(**eval_fields: object) -> ResolvedConfig:
    settings = EvalSettings(max_images=IMAGES, kid_subsets=5, grid_images=2, batch_size=2, **eval_fields)
    return resolve(PipelineConfig(dataset_uri="s3://bucket/synth", eval=settings), env={})


def test_evaluate_model_computes_every_metric_and_writes_artifacts(
    synthetic_dataset: Path, generators_dir: Path, inception_weights: Path, tmp_path: Path
) -> None:
    config = pipeline_config(inception_weights=str(inception_weights))
    report = evaluate_model(generators_dir, dataset_ref(synthetic_dataset), config, tmp_path / "eval")

    assert EXPECTED_KEYS <= report.metrics.keys() and not report.skipped
    assert all(np.isfinite(value) for value in report.metrics.values())
    metrics = report.metrics
    assert metrics["n_images_A"] == metrics["n_images_B"] == IMAGES
    assert metrics["fid_AtoB"] > 0 and metrics["fid_BtoA"] > 0  # random generators vs real images
    assert metrics["psnr_gain_AtoB"] == pytest.approx(metrics["psnr_AtoB"] - metrics["psnr_identity_AtoB"])
    assert 0 < metrics["ssim_identity_AtoB"] < 1 and metrics["cycle_l1_A"] > 0
    assert report.primary_metric == "psnr_AtoB" and report.primary_value == metrics["psnr_AtoB"]

    # rows: grid_images; columns: input | translated | reconstructed, 32 px tiles, 2 px padding
    for direction in ("AtoB", "BtoA"):
        with Image.open(report.artifacts[f"grid_{direction}"]) as grid:
            assert grid.size == (3 * (32 + 2) + 2, 2 * (32 + 2) + 2)
    saved = EvalReport.model_validate_json(report.artifacts["eval_report"].read_text())
    assert saved == report
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["eval_report.json", "grid_AtoB.png",
                                                                     "grid_BtoA.png"]


def test_identity_baseline_matches_a_numpy_computation_from_the_files(
    synthetic_dataset: Path, generators_dir: Path, no_cached_weights: None, tmp_path: Path
) -> None:
    report = evaluate_generators(generators_dir, synthetic_dataset, tmp_path / "eval",
                                 settings=EvalSettings(), registry=RegistrySettings())
    psnrs, l1s = [], []
    for ref_path in sorted((synthetic_dataset / "testA_ref").glob("*.png")):
        a = np.asarray(Image.open(synthetic_dataset / "testA" / ref_path.name).convert("RGB"), np.float64) / 255
        ref = np.asarray(Image.open(ref_path).convert("RGB"), np.float64) / 255
        psnrs.append(10 * np.log10(1.0 / np.mean((a - ref) ** 2)))
        l1s.append(np.mean(np.abs(a - ref)) * 2)  # [-1, 1] units
    assert report.metrics["n_images_A"] == len(psnrs) == 6
    assert report.metrics["psnr_identity_AtoB"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert report.metrics["l1_identity_AtoB"] == pytest.approx(np.mean(l1s), abs=1e-6)


def test_without_weights_fid_and_kid_are_skipped_with_the_reason(
    synthetic_dataset: Path, generators_dir: Path, no_cached_weights: None, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.clients.inception_weights"):
        report = evaluate_model(generators_dir, dataset_ref(synthetic_dataset), pipeline_config(), tmp_path / "out")
    assert set(report.metrics) == EXPECTED_KEYS - set(report.skipped) - {"kid_AtoB_std", "kid_BtoA_std"}
    assert set(report.skipped) == {"fid_AtoB", "fid_BtoA", "kid_AtoB", "kid_BtoA"}
    assert all("CYCLEGAN_INCEPTION_WEIGHTS" in reason for reason in report.skipped.values())
    assert not {"fid_AtoB", "kid_AtoB"} & report.metrics.keys()
    assert {"psnr_AtoB", "cycle_l1_A", "cycle_l1_B"} <= report.metrics.keys()
    assert "FID/KID skipped" in caplog.text


def test_corrupt_weights_are_skipped_with_a_reason_naming_the_file(
    synthetic_dataset: Path, generators_dir: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "broken.pth"
    corrupt.write_bytes(b"not a torch file")
    report = evaluate_model(generators_dir, dataset_ref(synthetic_dataset),
                            pipeline_config(inception_weights=str(corrupt)), tmp_path / "out")
    assert "broken.pth" in report.skipped["fid_AtoB"] and "not a readable" in report.skipped["fid_AtoB"]


def test_a_primary_metric_that_was_not_computed_is_a_clear_error(
    synthetic_dataset: Path, generators_dir: Path, no_cached_weights: None, tmp_path: Path
) -> None:
    config = pipeline_config().model_copy(update={"registry": RegistrySettings(primary_metric="fid_AtoB",
                                                                               higher_is_better=False)})
    with pytest.raises(ValueError, match=r"primary metric 'fid_AtoB' .* not computed .*Inception weights "
                                         r"unavailable.*computed metrics: cycle_l1_A"):
        evaluate_model(generators_dir, dataset_ref(synthetic_dataset), config, tmp_path / "out")


def test_images_are_batched_by_size_in_file_order(tmp_path: Path) -> None:
    sizes = [(16, 16), (16, 16), (20, 12), (16, 16), (16, 16), (16, 16)]
    for index, (width, height) in enumerate(sizes):
        Image.new("RGB", (width, height), (index * 40, 0, 0)).save(tmp_path / f"{index}.png")
    (tmp_path / "9.png").write_bytes(b"")  # unreadable: skipped
    paths = sorted(tmp_path.glob("*.png"))
    batches = [(len(names), tuple(batch.shape)) for names, batch in same_size_batches(paths, batch_size=2)]
    assert batches == [(2, (2, 3, 16, 16)), (1, (1, 3, 12, 20)), (2, (2, 3, 16, 16)), (1, (1, 3, 16, 16))]


def test_cli_evaluate_prints_the_report_as_json(
    synthetic_dataset: Path, generators_dir: Path, no_cached_weights: None, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--model", str(generators_dir), "--data", str(synthetic_dataset),
                                      "--out", str(tmp_path / "cli"), "--max-images", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["metrics"]["n_images_A"] == 2 and "fid_AtoB" in payload["skipped"]
    assert (tmp_path / "cli" / "eval_report.json").is_file()


def test_cli_evaluate_reports_a_missing_model_without_traceback(synthetic_dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "none"), "--data",
                                      str(synthetic_dataset), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 4  # ExitCode.REFUSED
    assert "none does not exist" in " ".join(result.output.split())  # rich wraps long lines


def test_s3_weights_are_downloaded_once_and_refreshed_when_they_change(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    client = boto3.client("s3")
    client.put_object(Bucket=s3_bucket, Key="fid/inception.pth", Body=b"first version")
    uri = f"s3://{s3_bucket}/fid/inception.pth"
    endpoint = services_from_env(os.environ).s3_endpoint_url  # the moto server, as the entry resolves it
    assert endpoint

    local = resolve_inception_weights(uri, s3_endpoint_url=endpoint)
    assert local.read_bytes() == b"first version" and local.is_relative_to(tmp_path / "torch-home")
    first_mtime = local.stat().st_mtime_ns
    assert resolve_inception_weights(uri, s3_endpoint_url=endpoint) == local
    assert local.stat().st_mtime_ns == first_mtime  # cached

    client.put_object(Bucket=s3_bucket, Key="fid/inception.pth", Body=b"second version!")
    assert resolve_inception_weights(uri, s3_endpoint_url=endpoint).read_bytes() == b"second version!"


def test_s3_weights_end_to_end_load_through_the_real_loader(
    s3_bucket: str, inception_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    boto3.client("s3").upload_file(str(inception_weights), s3_bucket, "weights/inception.pth")
    monkeypatch.setenv("CYCLEGAN_INCEPTION_WEIGHTS", f"s3://{s3_bucket}/weights/inception.pth")
    services = services_from_env(os.environ)  # what the entry resolves
    s3 = {"s3_endpoint_url": services.s3_endpoint_url, "s3_region": services.s3_region}
    extractor, reason = load_feature_extractor(services.inception_weights, torch.device("cpu"), **s3)
    assert reason == "" and extractor is not None
    missing, why = load_feature_extractor(f"s3://{s3_bucket}/weights/absent.pth", torch.device("cpu"), **s3)
    assert missing is None and "absent.pth" in why


def test_torchvision_weights_come_from_the_torch_hub_cache_without_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CYCLEGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert resolve_inception_weights(None) == cached
    assert resolve_inception_weights("torchvision") == cached
    monkeypatch.setenv("CYCLEGAN_INCEPTION_WEIGHTS", str(tmp_path / "mine.pth"))
    assert resolve_inception_weights(None) == cached  # below the entry nothing reads the environment
    assert resolve_inception_weights(services_from_env(os.environ).inception_weights) == tmp_path / "mine.pth"
    assert resolve_inception_weights(str(tmp_path / "explicit.pth")) == tmp_path / "explicit.pth"
