"""The tiny pipeline config the flow tests run end to end (test_flow, test_auth, test_secrets): 32 px
synthetic images, a resnet_6blocks of 8 filters, batch 4, evaluation on 4 images."""

from __future__ import annotations

from pathlib import Path

from cyclegan_core.config import DataConfig, ModelConfig, TrainConfig
from pipelines.config import (
    EvalSettings,
    PipelineConfig,
    RegistrySettings,
    ScalingSettings,
    TrainingRunSettings,
)


def tiny_flow_config(dataset_uri: str, root: Path, *, model_name: str, experiment: str, workers: int = 1,
                     decay_epochs: int = 0, storage_path: str | None = None,
                     local_num_cpus: int | None = None) -> PipelineConfig:
    """One epoch (plus ``decay_epochs``) on ``workers`` Ray workers; the cache, outputs and (unless
    ``storage_path``) the checkpoints under ``root``; the run named after the experiment."""
    return PipelineConfig(
        dataset_uri=dataset_uri, cache_dir=root / "cache", output_dir=root / "outputs",
        model=ModelConfig(generator="resnet_6blocks", ngf=8, ndf=8),
        train=TrainConfig(n_epochs=1, n_epochs_decay=decay_epochs, batch_size=4, pool_size=10),
        data=DataConfig(preprocess="none", load_size=32, crop_size=32, num_workers=0),
        scaling=ScalingSettings(num_workers=workers, cpus_per_worker=1, local_num_cpus=local_num_cpus),
        run=TrainingRunSettings(run_name=experiment, storage_path=storage_path or str(root / "runs"), max_failures=0),
        eval=EvalSettings(max_images=4),
        registry=RegistrySettings(model_name=model_name, experiment=experiment, primary_metric="psnr_AtoB"),
    )
