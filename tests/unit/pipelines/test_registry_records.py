"""What the registry writes without a server: params, the registration key, input checks, image cells."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.config import PipelineConfig, RegistrySettings, resolve
from pipelines.records import EvalReport, TrainResult
from pipelines.registry import RegistryError, decode_image_value, registration_key
from pipelines.registry.run_log import check_inputs
from pipelines.tracking.experiment import flatten_params

CONFIG = resolve(PipelineConfig(dataset_uri="s3://bucket/synth", registry=RegistrySettings(model_name="m")), env={})
REPORT = EvalReport(metrics={"psnr_AtoB": 20.0}, primary_metric="psnr_AtoB", primary_value=20.0)


def train_result(generators_dir: Path, **changes: object) -> TrainResult:
    fields: dict[str, object] = {
        "run_name": "cyclegan-abcd1234-ef567890", "checkpoint_uri": "/ckpt/c1", "generators_dir": generators_dir,
        "dataset_version": "v1", "dataset_uri": "s3://bucket/synth", "fingerprint": CONFIG.fingerprint,
        "steps": 2, "epochs": 1,
    }
    return TrainResult.model_validate(fields | changes)


def test_params_are_dotted_strings_within_mlflow_limit() -> None:
    config = CONFIG.user_config().model_copy(update={"dataset_uri": "s3://b/" + "x" * 7000})
    params = flatten_params(config)
    assert params["train.lr"] == "0.0002" and params["model.generator"] == "resnet_9blocks"
    assert params["registry.model_name"] == "m" and params["data.root"] == "null"
    assert all(isinstance(v, str) and len(v) <= 6000 for v in params.values())
    assert params["dataset_uri"].endswith("...")


def test_registration_key_follows_the_run_the_checkpoint_and_the_fingerprint(tmp_path: Path) -> None:
    base = train_result(tmp_path)
    assert registration_key(base) == registration_key(train_result(tmp_path, metrics={"loss": 1.0}))
    for change in ({"run_name": "other"}, {"checkpoint_uri": "/ckpt/c2"}, {"fingerprint": "0" * 16}):
        assert registration_key(train_result(tmp_path, **change)) != registration_key(base), change


def test_registering_with_another_config_than_the_one_that_trained_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="register with the config the run was trained with"):
        check_inputs(CONFIG, train_result(tmp_path, fingerprint="0" * 16), REPORT)
    with pytest.raises(RegistryError, match=r"lacks exported generator\(s\) \['G_AB', 'G_BA'\]"):
        check_inputs(CONFIG, train_result(tmp_path), REPORT)


def test_image_cells_accept_bytes_base64_and_arrays() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    encoded = buffer.getvalue()
    for value in (encoded, base64.b64encode(encoded).decode(), np.asarray(image)):
        assert np.array_equal(np.asarray(decode_image_value(value, row=0)), np.asarray(image))
    with pytest.raises(ValueError, match="row 3"):
        decode_image_value(b"not an image", row=3)
    with pytest.raises(ValueError, match="row 1: arrays must be"):
        decode_image_value(np.zeros((4, 4, 2), np.uint8), row=1)


def test_model_uris_that_name_a_registered_version() -> None:
    from pipelines.registry.operations import parse_model_uri

    assert parse_model_uri("models:/cyclegan@champion") == ("cyclegan", "alias", "champion")
    assert parse_model_uri("models:/team/cyclegan/3") == ("team/cyclegan", "version", "3")
    assert parse_model_uri("models:/m-0123abcd") is None and parse_model_uri("runs:/abc/model") is None
