"""Training: the CycleGAN model and its one step, the fit loop, losses, schedules, checkpoints.

Modules: ``model`` (CycleGAN: four networks, optimizers, ``train_step``), ``fit`` (the one training
loop), ``losses``, ``pool`` (image history), ``schedules`` (learning rates), ``checkpoint`` (exact
resume), ``watchdog`` (GAN health), ``distributed`` (collectives that also run without a group),
``rng`` (the global generators' state). Names imported on first use (``cyclegan_core._lazy``).
"""

from typing import TYPE_CHECKING

from cyclegan_core._lazy import lazy_attributes

if TYPE_CHECKING:
    from cyclegan_core.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from cyclegan_core.training.fit import EpochEnd, FitCallback, FitResult
    from cyclegan_core.training.model import CycleGAN
    from cyclegan_core.training.rng import seed_everything
    from cyclegan_core.training.watchdog import WatchdogConfig, diagnose

# ``fit`` (the loop) is cyclegan_core.fit: here the name is its module's
__all__ = [
    "CheckpointError",
    "CycleGAN",
    "EpochEnd",
    "FitCallback",
    "FitResult",
    "WatchdogConfig",
    "diagnose",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "checkpoint": ["CheckpointError", "load_checkpoint", "save_checkpoint"],
    "fit": ["EpochEnd", "FitCallback", "FitResult"],
    "model": ["CycleGAN"],
    "rng": ["seed_everything"],
    "watchdog": ["WatchdogConfig", "diagnose"],
})
