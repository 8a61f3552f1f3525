"""PipelineConfig: validation names the field, YAML loading, dotted overrides; resolve() and the
training fingerprint (what it covers and what it must not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.config import (
    DEFAULT_TRACKING_URI,
    ENVIRONMENT,
    PipelineConfig,
    ResolvedConfig,
    load_pipeline_config,
    resolve,
    training_fingerprint,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "example.yaml"


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


BASE = {"dataset_uri": "s3://b/p"}


def fingerprint_of(**changes: object) -> str:
    return training_fingerprint(PipelineConfig.model_validate({**BASE, **changes}))


# Each of these changes what training produces: a new fingerprint, so a new Ray run and cache entry.
CHANGES_THE_MODEL = [
    {"model": {"generator": "resnet_6blocks"}},
    {"model": {"ngf": 32}},
    {"model": {"norm": "batch"}},
    {"train": {"lr": 1e-3}},
    {"train": {"n_epochs": 3}},
    {"train": {"batch_size": 4}},
    {"train": {"seed": 1}},
    {"train": {"precision": "bf16"}},
    {"data": {"crop_size": 128}},
    {"data": {"flip": False}},
    {"data": {"max_images": 10}},
    {"scaling": {"num_workers": 2}},
    {"scaling": {"use_gpu": True}},
    {"run": {"max_steps": 5}},
]

# None of these changes the trained model: same fingerprint, so a retry or a moved cache resumes.
KEEPS_THE_MODEL = [
    {"dataset_uri": "s3://other-bucket/same-data"},
    {"cache_dir": "/elsewhere/cache"},
    {"output_dir": "/elsewhere/outputs"},
    {"data": {"root": "/some/folder"}},
    {"data": {"num_workers": 7}},
    {"data": {"use_cache": False}},
    {"scaling": {"local_num_cpus": 1}},
    {"scaling": {"cpus_per_worker": 3}},
    {"run": {"run_name": "other"}},
    {"run": {"storage_path": "s3://bucket/runs"}},
    {"run": {"checkpoint_every_epochs": 9}},
    {"run": {"num_to_keep": 5}},
    {"run": {"max_failures": 0}},
    {"eval": {"max_images": 3}},
    {"eval": {"every_epochs": 0, "during_training_images": 2}},
    {"watchdog": {"max_rollbacks": 5, "lr_factor": 0.1}},
    {"registry": {"model_name": "other", "margin": 1.0}},
    {"force": True},
]


@pytest.mark.parametrize("change", CHANGES_THE_MODEL, ids=lambda c: repr(c))
def test_fingerprint_covers_what_changes_the_model(change):
    assert fingerprint_of(**change) != fingerprint_of()


@pytest.mark.parametrize("change", KEEPS_THE_MODEL, ids=lambda c: repr(c))
def test_fingerprint_excludes_paths_services_local_resources_and_bookkeeping(change):
    assert fingerprint_of(**change) == fingerprint_of()


def test_fingerprint_is_stable_across_processes_and_key_order():
    reordered = PipelineConfig.model_validate({"train": {"lr": 2e-4, "n_epochs": 100}, **BASE})
    assert training_fingerprint(reordered) == fingerprint_of()
    # A literal: a code change that moves it starts every existing run afresh (no resume, no cache hit).
    assert fingerprint_of() == "8c2ef5df1d814c0e"


def test_resolve_makes_paths_absolute_and_reads_services_from_the_given_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "RAY_ADDRESS": "ray://head:10001",
           "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ENDPOINT_URL_S3": "http://s3only:9000",
           "AWS_DEFAULT_REGION": "eu-west-1", "CYCLEGAN_INCEPTION_WEIGHTS": "s3://w/inception.pth"}
    resolved = resolve(PipelineConfig(**BASE), env=env)
    assert isinstance(resolved, ResolvedConfig)
    assert resolved.cache_dir == tmp_path / ".cache" / "datasets"
    assert resolved.output_dir == tmp_path / "outputs"
    assert resolved.run.storage_path == str(tmp_path / "runs")
    services = resolved.services
    assert (services.tracking_uri, services.ray_address) == ("http://mlflow:5000", "ray://head:10001")
    assert services.s3_endpoint_url == "http://s3only:9000"  # the S3-specific variable wins
    assert services.s3_region == "eu-west-1"
    assert services.inception_weights == "s3://w/inception.pth"
    assert resolve(resolved) is resolved


def test_resolve_defaults_without_environment_and_keeps_s3_storage():
    resolved = resolve(PipelineConfig(**BASE, run={"storage_path": "s3://bucket/runs"},
                                      eval={"inception_weights": "/w.pth"}), env={})
    assert resolved.services.tracking_uri == DEFAULT_TRACKING_URI
    assert resolved.services.ray_address is None and resolved.services.s3_endpoint_url is None
    assert resolved.services.inception_weights == "/w.pth"  # the config's own setting wins
    assert resolved.run.storage_path == "s3://bucket/runs"


def test_one_identity_for_the_run_name_and_the_fingerprint_whatever_the_paths(tmp_path):
    here = resolve(PipelineConfig(**BASE, cache_dir=tmp_path / "a"), env={})
    there = resolve(PipelineConfig(**BASE, cache_dir=tmp_path / "b", output_dir=tmp_path / "o"),
                    env={"MLFLOW_TRACKING_URI": "http://x"})
    assert here.fingerprint == there.fingerprint == fingerprint_of()
    assert here.ray_run_name("abcdef0123456789") == f"cyclegan-abcdef01-{here.fingerprint[:8]}"
    assert here.ray_run_name("abcdef0123456789") == there.ray_run_name("abcdef0123456789")


def test_resolved_config_round_trips_through_json_and_logs_without_services():
    resolved = resolve(PipelineConfig(**BASE), env={"MLFLOW_TRACKING_URI": "http://x"})
    again = ResolvedConfig.model_validate_json(resolved.model_dump_json())
    assert again == resolved and again.fingerprint == resolved.fingerprint
    user = resolved.user_config()
    assert type(user) is PipelineConfig and "services" not in user.model_dump()
    assert user.cache_dir == resolved.cache_dir


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.yaml"):
        load_pipeline_config(tmp_path / "missing.yaml")


def test_environment_lists_every_variable_the_pipeline_reads():
    assert {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN",
            "RAY_ADDRESS", "RAY_TRAIN_V2_ENABLED", "MLFLOW_TRACKING_URI", "PREFECT_API_URL",
            "CYCLEGAN_INCEPTION_WEIGHTS"} <= set(ENVIRONMENT)


def test_mlflow_loading_takes_its_backend_from_the_environment_and_refuses_a_bad_one() -> None:
    from pipelines.config import inference_choice_from_env

    assert inference_choice_from_env({}) == ("auto", "auto")
    assert inference_choice_from_env({"CYCLEGAN_BACKEND": "torch", "CYCLEGAN_PRECISION": "fp32"}) == ("torch", "fp32")
    with pytest.raises(ValueError, match="CYCLEGAN_BACKEND=tensorrt .*backend must be one of auto, torch, openvino"):
        inference_choice_from_env({"CYCLEGAN_BACKEND": "tensorrt"})
    refused = "CYCLEGAN_PRECISION=int8: precision int8 calibrates on images of the model's input domain"
    with pytest.raises(ValueError, match=refused):
        inference_choice_from_env({"CYCLEGAN_PRECISION": "int8"})
