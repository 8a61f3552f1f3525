"""cyclegan_core: the CycleGAN library (networks, training, inference, evaluation, data), free of orchestration.

Sub-packages by capability: ``networks`` (generators and discriminators by name), ``training`` (the
model, its step and the fit loop), ``inference`` (the Translator, model files, backends), ``evaluation``
(scoring, metrics), ``data`` (images, the unpaired dataset). The names below are imported on first use,
so importing a light module (``cyclegan_core.config``) does not import torch.
"""

from typing import TYPE_CHECKING

from cyclegan_core._lazy import lazy_attributes

if TYPE_CHECKING:
    from cyclegan_core.config import DataConfig, ModelConfig, TrainConfig
    from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
    from cyclegan_core.data.synthetic import make_synthetic_dataset
    from cyclegan_core.evaluation.scoring import Evaluation, evaluate_translator
    from cyclegan_core.inference.backends import TranslatorLike, load_translator
    from cyclegan_core.inference.files import translate_path
    from cyclegan_core.inference.onnx_export import export_onnx
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.networks import build_discriminator, build_generator
    from cyclegan_core.training.checkpoint import load_checkpoint, save_checkpoint
    from cyclegan_core.training.fit import FitCallback, FitResult, fit
    from cyclegan_core.training.model import CycleGAN

__all__ = [
    "CycleGAN",
    "DataConfig",
    "Evaluation",
    "FitCallback",
    "FitResult",
    "ModelConfig",
    "TrainConfig",
    "Translator",
    "TranslatorLike",
    "UnpairedDataset",
    "build_dataloader",
    "build_discriminator",
    "build_generator",
    "evaluate_translator",
    "export_onnx",
    "fit",
    "load_checkpoint",
    "load_translator",
    "make_synthetic_dataset",
    "save_checkpoint",
    "translate_path",
]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "config": ["DataConfig", "ModelConfig", "TrainConfig"],
    "data.dataset": ["UnpairedDataset", "build_dataloader"],
    "data.synthetic": ["make_synthetic_dataset"],
    "evaluation.scoring": ["Evaluation", "evaluate_translator"],
    "inference.backends": ["TranslatorLike", "load_translator"],
    "inference.files": ["translate_path"],
    "inference.onnx_export": ["export_onnx"],
    "inference.translator": ["Translator"],
    "networks": ["build_discriminator", "build_generator"],
    "training.checkpoint": ["load_checkpoint", "save_checkpoint"],
    "training.fit": ["FitCallback", "FitResult", "fit"],
    "training.model": ["CycleGAN"],
})
