"""Distributed CycleGAN training on Ray Train (V2): ``train_on_ray(config, dataset) -> TrainResult``.

Modules: ``driver`` (train_on_ray), ``worker`` (the per-worker function), ``cluster`` (Ray connection
and checks), ``progress`` (the epoch metrics schema and the driver's progress lines), ``layout`` (the
checkpoint folder), ``storage`` (local or S3 checkpoint storage), ``upload`` (a checkpoint's report,
uploaded off the training path), ``checkpoint_models`` (the driver's MLflow LoggedModel per evaluated
checkpoint), ``resume`` and ``monitor``.
"""

import os

# Ray Train before V2-by-default (Ray < 2.5x) reads this when ray.train is first imported; the
# pipeline assumes V2's semantics (resume, errors). Listed in pipelines.config.ENVIRONMENT.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.train.cluster import connect_ray
    from pipelines.train.driver import TrainingError, train_on_ray

__all__ = ["TrainingError", "connect_ray", "train_on_ray"]
_HOME = {"connect_ray": "cluster", "TrainingError": "driver", "train_on_ray": "driver"}


def __getattr__(name: str) -> Any:
    """The driver's names, imported on first use (PEP 562): a Ray worker that imports
    ``pipelines.train.worker`` does not pay for the driver's imports (Ray Train, MLflow, the registry)."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
