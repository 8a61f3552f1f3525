"""Training: the CycleGAN model and its one step, the fit loop, losses, schedules, checkpoints."""
