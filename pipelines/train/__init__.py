"""Distributed CycleGAN training on Ray Train (V2): ``train_on_ray(config, dataset) -> TrainResult``.

Modules: ``driver`` (train_on_ray), ``worker`` (the per-worker function), ``cluster`` (Ray connection
and checks), ``progress`` (the epoch metrics schema and the driver's progress lines), ``layout`` (the
checkpoint folder), ``storage`` (local or S3 checkpoint storage).
"""

import os

# Ray Train before V2-by-default (Ray < 2.5x) reads this when ray.train is first imported; the
# pipeline assumes V2's semantics (resume, errors). Listed in pipelines.config.ENVIRONMENT.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

from pipelines.train.cluster import connect_ray
from pipelines.train.driver import TrainHooks, TrainingError, train_on_ray

__all__ = ["TrainHooks", "TrainingError", "connect_ray", "train_on_ray"]
