"""The CycleGAN training object: four networks, two Adam optimizers, LR schedules, image pools, one step.

Naming follows the official ``models/cycle_gan_model.py`` (its names in brackets):

- ``G_AB`` [netG_A] translates A -> B; ``G_BA`` [netG_B] translates B -> A.
- ``D_A`` [netD_A] judges domain **B** images: real_B against G_AB's fakes (fake_B);
  ``D_B`` [netD_B] judges domain **A** images: real_A against fake_A.
- Loss keys: ``G_A`` = adversarial loss of G_AB through D_A, ``G_B`` = of G_BA through D_B;
  ``cycle_A`` = ``lambda_A * |G_BA(G_AB(A)) - A|``, ``cycle_B`` = ``lambda_B * |G_AB(G_BA(B)) - B|``;
  ``idt_A`` = ``lambda_identity * lambda_B * |G_AB(B) - B|``, ``idt_B`` = ``lambda_identity * lambda_A
  * |G_BA(A) - A|``; ``D_A``/``D_B`` = ``0.5 * (real + fake)`` terms, plus ``gp_A``/``gp_B`` (already
  weighted by ``lambda_gp`` and included in ``D_A``/``D_B``) for ``gan_mode="wgangp"``.

``train_step`` is the official ``optimize_parameters``: generators first (discriminators frozen), then
both discriminators on pooled, detached fakes. For speed, calls that are independent per image are
batched together (e.g. ``G_AB`` on ``[real_A, real_B]`` gives ``fake_B`` and ``idt_A`` in one call)
unless ``norm="batch"``, whose statistics would then mix the batches. Per-step values are reduced to
Python floats once, at the end of the step (one device synchronisation).

Distributed: when ``torch.distributed`` is initialised with more than one rank (Ray Train, torchrun)
the constructor wraps the four networks in ``DistributedDataParallel``, so gradients are averaged
across ranks and the caller only shards the data. The generator step evaluates the *unwrapped*
discriminators (their weights are frozen there, so no DDP reducer must wait for them); the
discriminator step sees only detached fakes. Image pools and RNG streams are per rank.
``state_dict()`` holds the unwrapped modules' weights (no ``module.`` prefix) and the calling rank's
pools and RNG states.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.networks import (
    clip_rho_,
    count_parameters,
    discriminator_from_config,
    generator_from_config,
    size_multiple,
)
from cyclegan_core.precision import ResolvedPrecision, autocast, channels_last_on, resolve_precision
from cyclegan_core.training.losses import GANLoss, cycle_loss, gradient_penalty, identity_loss
from cyclegan_core.training.pool import ImagePool
from cyclegan_core.training.rng import capture_rng_state, restore_rng_state, seed_everything
from cyclegan_core.training.schedules import build_scheduler, replay_schedule

logger = logging.getLogger(__name__)

STATE_FORMAT = "cyclegan_core.training_state"
STATE_VERSION = 1
NET_NAMES: tuple[str, ...] = ("G_AB", "G_BA", "D_A", "D_B")
LOSS_KEYS: tuple[str, ...] = ("G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B")
GP_KEYS: tuple[str, ...] = ("gp_A", "gp_B")
STATE_KEYS: tuple[str, ...] = (
    "format", "version", "model_config", "train_config", "nets", "optimizers", "schedulers", "pools",
    "scaler", "step", "epoch", "rng",
)
# TrainConfig fields that define the learning-rate schedule (see load_state_dict).
SCHEDULE_FIELDS: tuple[str, ...] = ("lr", "lr_policy", "n_epochs", "n_epochs_decay", "lr_decay_iters")


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable ``field: saved -> current`` lines for every field whose value differs."""
    return [
        f"{key}: {saved.get(key, '<absent>')!r} in the checkpoint, {current.get(key, '<absent>')!r} here"
        for key in sorted(set(saved) | set(current))
        if saved.get(key, "<absent>") != current.get(key, "<absent>")
    ]


def _set_requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(flag)


class CycleGAN:
    """Two generators and two discriminators trained with the CycleGAN objective (see module docstring)."""

    def __init__(
        self, model_cfg: ModelConfig, train_cfg: TrainConfig, *, device: str | torch.device = "cpu",
        cpu_auto: ResolvedPrecision = "fp32",
    ) -> None:
        """``cpu_auto``: what ``train_cfg.precision="auto"`` runs on a CPU, measured by the entry point on
        this machine (``cyclegan_core.inference.backends.training_precision``); fp32, the official math, by default."""
        if train_cfg.lambda_identity > 0 and model_cfg.input_nc != model_cfg.output_nc:
            raise ValueError(
                f"identity loss needs input_nc == output_nc (got {model_cfg.input_nc} and "
                f"{model_cfg.output_nc}); set train.lambda_identity=0 for domains with different channels"
            )
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precision: ResolvedPrecision = resolve_precision(train_cfg.precision, self.device,
                                                                cpu_auto=cpu_auto)
        # NHWC on CUDA and for CPU bf16 (oneDNN's fast bf16 kernels); fp32 on CPU stays NCHW (official math)
        self.channels_last = train_cfg.channels_last and (
            self.device.type == "cuda" or channels_last_on(self.device, self.precision))
        in_group = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if in_group else 0
        self.world_size = dist.get_world_size() if in_group else 1
        # a group of one (one Ray Train worker) has nothing to average: DDP would only add bucket copies
        self.distributed = self.world_size > 1
        self.step = self.epoch = 0
        self._multiple = size_multiple(model_cfg.generator)
        # batch statistics would mix images that the official code feeds separately
        self._batch_calls = model_cfg.norm != "batch"
        self._clip_rho = model_cfg.generator == "resnet_unet_adalin"

        # The order below is the official one: the nets' initialisation draws from the seeded global RNG.
        self._build_nets()
        self._build_optimizers()
        self.fake_A_pool = ImagePool(train_cfg.pool_size, seed=train_cfg.seed + 1 + 2 * self.rank)
        self.fake_B_pool = ImagePool(train_cfg.pool_size, seed=train_cfg.seed + 2 + 2 * self.rank)
        self.gan_loss = GANLoss(train_cfg.gan_mode)
        self._wrap_for_training()
        if self.rank:
            seed_everything(train_cfg.seed + self.rank)  # independent dropout / penalty draws per rank
        logger.info(
            "CycleGAN %s/%s on %s: G %d + %d, D %d + %d parameters; precision %s, channels_last %s, "
            "compile %s (%s), world size %d",
            model_cfg.generator, model_cfg.discriminator, self.device,
            *(count_parameters(net) for net in (self.G_AB, self.G_BA, self.D_A, self.D_B)),
            self.precision, self.channels_last, train_cfg.compile, train_cfg.compile_mode, self.world_size,
        )

    def _build_nets(self) -> None:
        """G_AB, G_BA, D_A, D_B in this order from ``train.seed``: the same initial weights on every rank
        (DDP also broadcasts rank 0's)."""
        cfg = self.model_cfg
        seed_everything(self.train_cfg.seed)
        self.G_AB = self._place(generator_from_config(cfg))
        self.G_BA = self._place(generator_from_config(cfg.model_copy(update={"input_nc": cfg.output_nc,
                                                                              "output_nc": cfg.input_nc})))
        self.D_A = self._place(discriminator_from_config(cfg, input_nc=cfg.output_nc))
        self.D_B = self._place(discriminator_from_config(cfg, input_nc=cfg.input_nc))

    def _build_optimizers(self) -> None:
        """One Adam for both generators, one for both discriminators (the official parameter order), their
        LR schedules and the fp16 gradient scaler."""
        train_cfg = self.train_cfg
        adam_options: dict[str, Any] = {"lr": train_cfg.lr, "betas": (train_cfg.beta1, train_cfg.beta2)}
        if self.device.type == "cuda":
            adam_options["fused"] = True
        self.optimizer_G = torch.optim.Adam(
            itertools.chain(self.G_AB.parameters(), self.G_BA.parameters()), **adam_options
        )
        self.optimizer_D = torch.optim.Adam(
            itertools.chain(self.D_A.parameters(), self.D_B.parameters()), **adam_options
        )
        self.scheduler_G = build_scheduler(self.optimizer_G, train_cfg)
        self.scheduler_D = build_scheduler(self.optimizer_D, train_cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _wrap_for_training(self) -> None:
        """What ``train_step`` calls: DDP-wrapped and/or compiled views of the same parameters; the
        generator step evaluates the unwrapped discriminators (frozen; no DDP reducer involved)."""
        self._train_nets: dict[str, nn.Module] = {}
        for name in NET_NAMES:
            module: nn.Module = getattr(self, name)
            if self.distributed:
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                module = DistributedDataParallel(module, device_ids=device_ids)
            self._train_nets[name] = self._maybe_compile(module)
        self._frozen_D: dict[str, nn.Module] = {
            name: self._maybe_compile(getattr(self, name)) for name in ("D_A", "D_B")
        }

    # ----------------------------------------------------------------------------------------- helpers
    def _place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def _maybe_compile(self, module: nn.Module) -> nn.Module:
        if not self.train_cfg.compile:
            return module
        return torch.compile(module, mode=self.train_cfg.compile_mode)

    def _autocast(self) -> AbstractContextManager[None]:
        return autocast(self.device, self.precision)

    def _prepare(self, images: Tensor, name: str, channels: int) -> Tensor:
        if images.dim() != 4 or images.shape[1] != channels:
            raise ValueError(
                f"{name} must be an N x {channels} x H x W batch, got shape {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if height % self._multiple or width % self._multiple:
            raise ValueError(
                f"{name} is {height}x{width}; generator {self.model_cfg.generator!r} needs height and width "
                f"that are multiples of {self._multiple} (crop or pad the images)"
            )
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    @property
    def nets(self) -> dict[str, nn.Module]:
        """The four plain (unwrapped, uncompiled) networks by name."""
        return {name: getattr(self, name) for name in NET_NAMES}

    def learning_rate(self) -> float:
        """The current learning rate (generators and discriminators follow the same schedule)."""
        return float(self.optimizer_G.param_groups[0]["lr"])

    # -------------------------------------------------------------------------------------- training
    def _generate(self, real_A: Tensor, real_B: Tensor) -> dict[str, Tensor | None]:
        """fake_B, rec_A, fake_A, rec_B and (when lambda_identity > 0) idt_A, idt_B."""
        G_AB, G_BA = self._train_nets["G_AB"], self._train_nets["G_BA"]
        with_identity = self.train_cfg.lambda_identity > 0
        n_A, n_B = real_A.shape[0], real_B.shape[0]
        if self._batch_calls:
            out_AB = G_AB(torch.cat([real_A, real_B]) if with_identity else real_A)
            fake_B, idt_A = out_AB[:n_A], (out_AB[n_A:] if with_identity else None)
            out_BA = G_BA(torch.cat([real_B, fake_B, real_A] if with_identity else [real_B, fake_B]))
            fake_A, rec_A = out_BA[:n_B], out_BA[n_B : n_B + n_A]
            idt_B = out_BA[n_B + n_A :] if with_identity else None
            rec_B = G_AB(fake_A)
        else:
            fake_B = G_AB(real_A)
            rec_A = G_BA(fake_B)
            fake_A = G_BA(real_B)
            rec_B = G_AB(fake_A)
            idt_A = G_AB(real_B) if with_identity else None
            idt_B = G_BA(real_A) if with_identity else None
        return {
            "fake_B": fake_B,
            "rec_A": rec_A,
            "fake_A": fake_A,
            "rec_B": rec_B,
            "idt_A": idt_A,
            "idt_B": idt_B,
        }

    def _discriminator_loss(self, name: str, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor | None]:
        """``0.5 * (loss(D(real), real) + loss(D(fake), fake))`` (+ the gradient penalty for wgangp)."""
        D = self._train_nets[name]
        if self._batch_calls and real.shape[0] == fake.shape[0]:
            scores = D(torch.cat([real, fake]))
            score_real, score_fake = scores[: real.shape[0]], scores[real.shape[0] :]
        else:
            score_real, score_fake = D(real), D(fake)
        loss = 0.5 * (self.gan_loss(score_real, True) + self.gan_loss(score_fake, False))
        if self.train_cfg.gan_mode != "wgangp":
            return loss, None
        if self.precision == "fp16":
            # fp16 input gradients can underflow without loss scaling: take the penalty in fp32
            with torch.autocast(device_type=self.device.type, enabled=False):
                penalty = gradient_penalty(D, real.float(), fake.float(), lambda_gp=self.train_cfg.lambda_gp)
        else:
            penalty = gradient_penalty(D, real, fake, lambda_gp=self.train_cfg.lambda_gp)
        return loss + penalty, penalty

    def train_step(self, real_A: Tensor, real_B: Tensor) -> dict[str, float]:
        """One optimisation step on a batch of each domain; returns the loss values (see module docstring)."""
        cfg = self.train_cfg
        real_A = self._prepare(real_A, "real_A", self.model_cfg.input_nc)
        real_B = self._prepare(real_B, "real_B", self.model_cfg.output_nc)
        discriminators = (self.D_A, self.D_B)

        # generators: D_A/D_B frozen and called unwrapped
        _set_requires_grad(discriminators, False)
        self.optimizer_G.zero_grad(set_to_none=True)
        with self._autocast():
            out = self._generate(real_A, real_B)
            score_fake_B = self._frozen_D["D_A"](out["fake_B"])
            score_fake_A = self._frozen_D["D_B"](out["fake_A"])
        losses: dict[str, Tensor] = {
            "G_A": self.gan_loss(score_fake_B, True, for_discriminator=False),
            "G_B": self.gan_loss(score_fake_A, True, for_discriminator=False),
            "cycle_A": cycle_loss(out["rec_A"], real_A, cfg.lambda_A),
            "cycle_B": cycle_loss(out["rec_B"], real_B, cfg.lambda_B),
        }
        if out["idt_A"] is not None and out["idt_B"] is not None:
            losses["idt_A"] = identity_loss(out["idt_A"], real_B, cfg.lambda_identity * cfg.lambda_B)
            losses["idt_B"] = identity_loss(out["idt_B"], real_A, cfg.lambda_identity * cfg.lambda_A)
        else:
            losses["idt_A"] = losses["idt_B"] = torch.zeros((), device=self.device)
        loss_G = sum(losses.values(), torch.zeros((), device=self.device))
        self.scaler.scale(loss_G).backward()
        self.scaler.step(self.optimizer_G)
        if self._clip_rho:
            clip_rho_(self.G_AB)
            clip_rho_(self.G_BA)

        # discriminators: pooled, detached fakes
        _set_requires_grad(discriminators, True)
        self.optimizer_D.zero_grad(set_to_none=True)
        fake_B = self.fake_B_pool.query(out["fake_B"].detach())
        fake_A = self.fake_A_pool.query(out["fake_A"].detach())
        with self._autocast():
            losses["D_A"], gp_A = self._discriminator_loss("D_A", real_B, fake_B)
            losses["D_B"], gp_B = self._discriminator_loss("D_B", real_A, fake_A)
        self.scaler.scale(losses["D_A"] + losses["D_B"]).backward()
        self.scaler.step(self.optimizer_D)
        self.scaler.update()
        self.step += 1

        keys = list(LOSS_KEYS)
        values = [losses[key].detach().float() for key in keys]
        if gp_A is not None and gp_B is not None:
            keys += list(GP_KEYS)
            values += [gp_A.detach().float(), gp_B.detach().float()]
        return dict(zip(keys, torch.stack(values).tolist(), strict=True))

    def end_epoch(self) -> None:
        """Advance both LR schedules by one epoch and count it."""
        self.scheduler_G.step()
        self.scheduler_D.step()
        self.epoch += 1

    # ---------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; tensors, plain containers and scalars only."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model_config": self.model_cfg.model_dump(mode="json"),
            "train_config": self.train_cfg.model_dump(mode="json"),
            "nets": {name: module.state_dict() for name, module in self.nets.items()},
            "optimizers": {"G": self.optimizer_G.state_dict(), "D": self.optimizer_D.state_dict()},
            "schedulers": {"G": self.scheduler_G.state_dict(), "D": self.scheduler_D.state_dict()},
            "pools": {"fake_A": self.fake_A_pool.state_dict(), "fake_B": self.fake_B_pool.state_dict()},
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Raises ``ValueError`` naming what does not match.

        The architecture (``ModelConfig``) must be identical. ``TrainConfig`` differences are allowed
        (this object's config wins, e.g. another precision on another machine) and logged.
        The global RNG states are restored too. After an error the object may be partly loaded:
        build a fresh one.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a CycleGAN training state (expected format {STATE_FORMAT!r})")
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"training state lacks the keys {missing}")
        if state["version"] > STATE_VERSION:
            raise ValueError(
                f"training state version {state['version']} is newer than this code's {STATE_VERSION}"
            )
        model_diff = config_differences(state["model_config"], self.model_cfg.model_dump(mode="json"))
        if model_diff:
            raise ValueError("model architecture differs: " + "; ".join(model_diff))
        missing_nets = [name for name in NET_NAMES if name not in state["nets"]]
        if missing_nets:
            raise ValueError(f"training state lacks the networks {missing_nets}")
        train_diff = config_differences(state["train_config"], self.train_cfg.model_dump(mode="json"))
        if train_diff:
            logger.warning(
                "resuming with a different train config (this one applies): %s", "; ".join(train_diff)
            )

        for name, module in self.nets.items():
            try:
                module.load_state_dict(state["nets"][name])
            except RuntimeError as error:
                raise ValueError(f"network {name}: {error}") from error
        for optimizer, key in ((self.optimizer_G, "G"), (self.optimizer_D, "D")):
            # keep this machine's implementation choice (a CUDA checkpoint says fused=True)
            kernels = [
                {k: group.get(k) for k in ("fused", "foreach", "capturable")}
                for group in optimizer.param_groups
            ]
            optimizer.load_state_dict(state["optimizers"][key])
            for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
                group.update(kernel)
        self.scheduler_G.load_state_dict(state["schedulers"]["G"])
        self.scheduler_D.load_state_dict(state["schedulers"]["D"])
        self.fake_A_pool.load_state_dict(state["pools"]["fake_A"])
        self.fake_B_pool.load_state_dict(state["pools"]["fake_B"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        if any(state["train_config"].get(field) != getattr(self.train_cfg, field) for field in SCHEDULE_FIELDS):
            # The saved learning rate belongs to the old schedule (e.g. 0 at its end when a run is
            # resumed for more epochs): replay this config's schedule up to the resumed epoch instead.
            self.scheduler_G = replay_schedule(self.optimizer_G, self.train_cfg, self.epoch)
            self.scheduler_D = replay_schedule(self.optimizer_D, self.train_cfg, self.epoch)
        restore_rng_state(state["rng"])

