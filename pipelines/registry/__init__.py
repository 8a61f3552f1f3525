"""MLflow logging, model registry and the promotion gate: the last stage of the pipeline.

``session`` (clients, retries, probe), ``run_log`` (the MLflow run), ``pyfunc`` (the served model),
``logged_models`` (checkpoints as LoggedModels), ``gate`` (the promotion decision), ``operations``
(register, promote, champion, download), ``hand_registered`` (a version registered by hand from a
LoggedModel: its card and gate) and ``access`` (users and grants of a basic-auth tracking server).

Browse a local store with:
``mlflow ui --backend-store-uri sqlite:///mlruns.db --default-artifact-root ./mlartifacts``
"""

from pipelines.registry.gate import CHALLENGER, CHAMPION, gate_decision
from pipelines.registry.operations import (
    champion_identity,
    download_model,
    find_generators_folder,
    promote,
    register_model,
)
from pipelines.registry.pyfunc import ImageTranslationModel, decode_image_value
from pipelines.registry.run_log import registration_key
from pipelines.tracking.session import MLFLOW_RETRY, RegistryError, check_reachable

__all__ = [
    "CHALLENGER", "CHAMPION", "MLFLOW_RETRY", "ImageTranslationModel", "RegistryError", "champion_identity",
    "check_reachable", "decode_image_value", "download_model", "find_generators_folder",
    "gate_decision", "promote", "register_model", "registration_key",
]
