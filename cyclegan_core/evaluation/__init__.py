"""Evaluation: scoring a Translator on a dataset's test splits, and the metrics it reports.

Modules: ``scoring`` (``evaluate_translator``: paired metrics, FID/KID, cycle error, sample grids),
``during_training`` (the same scoring of a training model's generators in memory, the labelled grid),
``metrics`` (PSNR, SSIM, L1, FID, KID), ``inception`` (the FID/KID feature extractor and its weights).
Names imported on first use (``cyclegan_core._lazy``).
"""

from typing import TYPE_CHECKING

from cyclegan_core._lazy import lazy_attributes

if TYPE_CHECKING:
    from cyclegan_core.evaluation.during_training import score_model
    from cyclegan_core.evaluation.inception import InceptionFeatureExtractor
    from cyclegan_core.evaluation.scoring import Evaluation, evaluate_translator

__all__ = ["Evaluation", "InceptionFeatureExtractor", "evaluate_translator", "score_model"]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "during_training": ["score_model"],
    "inception": ["InceptionFeatureExtractor"],
    "scoring": ["Evaluation", "evaluate_translator"],
})
