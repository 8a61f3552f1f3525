"""PipelineConfig: validation names the field, YAML loading, dotted overrides, stable hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.config import ENVIRONMENT, PipelineConfig, load_pipeline_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "example.yaml"


def test_example_config_is_valid():
    config = load_pipeline_config(EXAMPLE)
    assert config.model.generator == "resnet_9blocks"
    assert config.registry.higher_is_better is False


def test_dotted_overrides_apply_and_are_validated(tmp_path):
    config = load_pipeline_config(EXAMPLE, {"train.lr": 1e-4, "scaling.num_workers": 4})
    assert config.train.lr == 1e-4 and config.scaling.num_workers == 4
    with pytest.raises(ValueError, match="num_workers"):
        load_pipeline_config(EXAMPLE, {"scaling.num_workers": 0})


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset_uri: s3://b/p\ntrain:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml[\s\S]*learning_rate"):
        load_pipeline_config(path)


def test_dataset_uri_must_be_s3():
    with pytest.raises(ValidationError, match="dataset_uri"):
        PipelineConfig(dataset_uri="/data/horse2zebra")


def test_crop_larger_than_load_is_rejected():
    with pytest.raises(ValidationError, match="crop_size"):
        PipelineConfig(dataset_uri="s3://b/p", data={"load_size": 128, "crop_size": 256})


def test_config_hash_ignores_registry_and_force_but_not_training():
    base = PipelineConfig(dataset_uri="s3://b/p")
    assert base.config_hash() == PipelineConfig(dataset_uri="s3://b/p", force=True,
                                                registry={"model_name": "other"}).config_hash()
    assert base.config_hash() != PipelineConfig(dataset_uri="s3://b/p", train={"lr": 1e-3}).config_hash()


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.yaml"):
        load_pipeline_config(tmp_path / "missing.yaml")


def test_environment_lists_the_service_switches():
    assert {"AWS_ENDPOINT_URL", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"} <= set(ENVIRONMENT)
