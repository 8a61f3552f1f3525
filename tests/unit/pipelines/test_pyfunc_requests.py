"""The pyfunc model's answer to a bad request: a ``BadRequest`` that MLflow's scoring server turns into a 400
with its message, and that ``predict`` callers can still catch as a ``ValueError``."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import build_generator
from pipelines.registry.pyfunc import BadRequest, ImageTranslationModel, tiny_png


@pytest.fixture()
def model() -> ImageTranslationModel:
    torch.manual_seed(0)
    model = ImageTranslationModel()
    model._translator = Translator(build_generator("resnet_6blocks", ngf=4).eval(), None,
                                   ModelConfig(generator="resnet_6blocks", ngf=4))
    return model


@pytest.mark.parametrize(("data", "params", "message"), [
    (pd.DataFrame({"image": [tiny_png()]}), {"direction": "sideways"}, "param direction must be one of"),
    (pd.DataFrame({"image": [b"GIF? no"]}), None, "image row 0: not a readable image"),
    (pd.DataFrame({"picture": [tiny_png()]}), None, "input needs a column 'image'"),
])
def test_a_bad_request_is_a_400_bad_request_and_a_value_error(model: ImageTranslationModel, data: pd.DataFrame,
                                                               params: dict | None, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        model.predict(None, data, params=params)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MlflowException)
    assert caught.value.get_http_status_code() == 400
