"""Typed configuration of the CycleGAN library: what to build (ModelConfig), how to train it
(TrainConfig) and which images to feed it (DataConfig).

These are the only knobs ``cyclegan_core`` reads. The pipeline composes them in
``pipelines.config.PipelineConfig``; exported generators carry their ``ModelConfig`` so a saved model
is self-describing. Defaults are the official CycleGAN's (Zhu et al. 2017, junyanz/pytorch-CycleGAN-and-pix2pix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GeneratorName = Literal["resnet_9blocks", "resnet_6blocks", "unet_128", "unet_256", "resnet_unet_adalin"]
DiscriminatorName = Literal["basic", "n_layers", "pixel"]
NormName = Literal["instance", "batch", "none"]
InitName = Literal["normal", "xavier", "kaiming", "orthogonal"]
GanMode = Literal["lsgan", "vanilla", "hinge", "wgangp"]
LrPolicy = Literal["linear", "step", "cosine"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# torch.compile modes; "reduce-overhead" adds CUDA graphs (for launch-bound small batches)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Preprocess = Literal["resize_and_crop", "crop", "scale_width", "none"]
Direction = Literal["AtoB", "BtoA"]


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """Architecture of the two generators (G_AB, G_BA) and two discriminators (D_A, D_B)."""

    generator: GeneratorName = "resnet_9blocks"
    discriminator: DiscriminatorName = "basic"
    input_nc: int = Field(3, ge=1, description="channels of domain A images")
    output_nc: int = Field(3, ge=1, description="channels of domain B images")
    ngf: int = Field(64, ge=1, description="generator filters in the first conv layer")
    ndf: int = Field(64, ge=1, description="discriminator filters in the first conv layer")
    n_layers_d: int = Field(3, ge=1, description="depth of the 'n_layers' discriminator ('basic' is 3)")
    norm: NormName = "instance"
    dropout: bool = False
    init_type: InitName = "normal"
    init_gain: float = Field(0.02, gt=0)


class TrainConfig(StrictModel):
    """Losses, optimisation and numerics of the training step."""

    gan_mode: GanMode = "lsgan"
    lambda_A: float = Field(10.0, ge=0, description="weight of the cycle loss A -> B -> A")
    lambda_B: float = Field(10.0, ge=0, description="weight of the cycle loss B -> A -> B")
    lambda_identity: float = Field(
        0.5, ge=0, description="identity loss weight, relative to lambda_A/lambda_B as in the official code"
    )
    lambda_gp: float = Field(10.0, ge=0, description="gradient-penalty weight (gan_mode='wgangp')")
    pool_size: int = Field(50, ge=0, description="image history pool size; 0 disables the pool")
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    lr_policy: LrPolicy = "linear"
    n_epochs: int = Field(100, ge=0, description="epochs at the initial learning rate")
    n_epochs_decay: int = Field(100, ge=0, description="epochs of linear decay to zero ('linear' policy)")
    lr_decay_iters: int = Field(50, ge=1, description="epochs between x0.1 steps ('step' policy)")
    batch_size: int = Field(1, ge=1, description="images per domain per step, per worker")
    precision: Precision = Field(
        "auto", description="'auto' = bf16 autocast on CUDA; on a CPU the faster of fp32 and bf16 measured on that "
        "machine (bf16 only within 40 dB of fp32), fp32 where nothing measured it")
    channels_last: bool = Field(True, description="NHWC memory format on CUDA and for bf16 on CPU")
    compile: bool = Field(False, description="torch.compile the four networks")
    compile_mode: CompileMode = Field("default", description="torch.compile mode when compile is on")
    seed: int = 0

    @property
    def total_epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay


class DataConfig(StrictModel):
    """Where the unpaired images are and how they are preprocessed (official option names)."""

    root: Path | None = Field(None, description="dataset folder with trainA/ trainB/ testA/ testB/")
    preprocess: Preprocess = "resize_and_crop"
    load_size: int = Field(286, ge=1)
    crop_size: int = Field(256, ge=1)
    flip: bool = True
    direction: Direction = "AtoB"
    max_images: int | None = Field(None, ge=1, description="use at most this many images per domain")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    use_cache: bool = Field(True, description="read the pre-decoded uint8 cache when the dataset has one")

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        if self.preprocess in ("resize_and_crop", "scale_width") and self.crop_size > self.load_size:
            raise ValueError(
                f"crop_size ({self.crop_size}) must be <= load_size ({self.load_size}) "
                f"for preprocess={self.preprocess!r}"
            )
        return self
