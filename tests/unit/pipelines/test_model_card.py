"""The model card of a registered version (pure): tags and the markdown description."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import PipelineConfig, RegistrySettings, resolve
from pipelines.records import EvalReport, TrainResult
from pipelines.registry.model_card import card_markdown, card_tags, fid_protocol, identity_baseline

CONFIG = resolve(PipelineConfig(dataset_uri="s3://bucket/synth", registry=RegistrySettings(model_name="m")), env={})
TRAIN = TrainResult(run_name="cyclegan-ab", checkpoint_uri="/ckpt/c2", generators_dir=Path("/g"), dataset_version="v1",
                    dataset_uri="s3://bucket/synth", fingerprint=CONFIG.fingerprint, steps=6, epochs=2, best_epoch=1)
SKIPPED = EvalReport(
    metrics={"psnr_AtoB": 21.0, "psnr_identity_AtoB": 18.5, "n_images_A": 6.0},
    primary_metric="psnr_AtoB",
    primary_value=21.0,
    skipped={"fid_AtoB": "no Inception weights configured", "kid_AtoB": "no Inception weights configured"},
)
SCORED = EvalReport(metrics={"psnr_AtoB": 21.0, "fid_AtoB": 40.0, "n_images_A": 6.0, "n_images_B": 5.0},
                    primary_metric="fid_AtoB", primary_value=40.0)


def test_identity_baseline_of_a_paired_metric() -> None:
    assert identity_baseline("psnr_AtoB") == "psnr_identity_AtoB"
    assert identity_baseline("ssim_BtoA") == "ssim_identity_BtoA"
    assert identity_baseline("psnr_identity_AtoB") is None and identity_baseline("cycle_l1_A") is None


def test_card_tags_carry_best_epoch_baseline_code_version_and_skip_reasons() -> None:
    tags = card_tags(CONFIG, TRAIN, SKIPPED, git_sha="abc123")
    assert tags["best_epoch"] == "1"
    assert tags["primary_metric_baseline"].startswith("psnr_identity_AtoB=18.5")
    assert tags["code_version"].startswith("cyclegan-pipeline ") and tags["code_version"].endswith("git abc123")
    assert tags["fid_protocol"] == "skipped: no Inception weights configured"
    assert tags["skipped.fid_AtoB"] == "no Inception weights configured"
    no_best = TRAIN.model_copy(update={"best_epoch": None})
    assert card_tags(CONFIG, no_best, SKIPPED, git_sha="x")["best_epoch"] == "last (2)"


def test_fid_protocol_names_weights_preprocessing_and_counts() -> None:
    protocol = fid_protocol(CONFIG, SCORED)
    assert "299x299" in protocol and "6 testA, 5 testB" in protocol
    assert f"{CONFIG.eval.kid_subsets} subsets of at most {CONFIG.eval.kid_subset_size}" in protocol


def test_card_markdown_reads_as_one_card() -> None:
    text = card_markdown(CONFIG, TRAIN, SKIPPED, git_sha="abc123", decision="kept_champion",
                         reason="champion stays", champion_value=22.0)
    for expected in ("`s3://bucket/synth` version `v1`", f"`{CONFIG.fingerprint}`", "exported epoch: 1",
                     "psnr_AtoB=21", "champion's value at the gate: 22", "gate: kept_champion (champion stays)",
                     "git abc123", "FID/KID: skipped"):
        assert expected in text, expected
