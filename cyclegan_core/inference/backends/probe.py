"""The measurements behind ``auto``: every candidate path timed on a probe of one generator.

Translation: synthetic scenes of ``PROBE_SIZE``² through the model's A->B generator in torch fp32
(the reference), torch bf16 (autocast, channels_last) and OpenVINO fp32 and bf16 (the converted model
is the cache entry translation then uses). Speed: the first scene, one warm-up call each, then ``ROUNDS``
rounds in turn (round-robin, so load drift hits all alike; more rounds for runs of milliseconds, about a
second of each); the fastest call of each counts. Quality: the worst PSNR against fp32 over
``QUALITY_SCENES`` scenes, since bf16's error depends on the content (one scene of six fell 5 dB below the
others on a random resnet_9blocks) and grows with the image (about 1.5 dB per doubling of the side from
256² to 1024²): ``TRANSLATE_BOUND_DB`` asks the probe for ``LARGE_IMAGE_ALLOWANCE_DB`` more than the 40 dB
an output of 4x the probe's side must keep (benchmarks/README.md "CPU inference"). About 15 s for
resnet_9blocks ngf 64 on 2 cores, once per machine, thread count, library versions and architecture.
Training: one generator + discriminator step (forward, losses, backward, Adam) at the training crop (at
most ``TRAIN_PROBE_SIZE`` px) in fp32 and bf16; the output check is the generator's forward pass.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.synthetic import render_scene
from cyclegan_core.inference.backends.decision import Measurement
from cyclegan_core.inference.backends.host import HostIdentity
from cyclegan_core.inference.backends.interface import QUALITY_BOUND_DB
from cyclegan_core.inference.backends.libraries import import_openvino
from cyclegan_core.inference.backends.model_cache import cached_model, model_key
from cyclegan_core.inference.backends.openvino_runtime import compile_model, convert
from cyclegan_core.inference.translator import Translator, pil_to_tensor
from cyclegan_core.networks import discriminator_from_config, generator_from_config
from cyclegan_core.precision import autocast
from cyclegan_core.training.rng import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

PROBE_SIZE = 256
QUALITY_SCENES = 4
LARGE_IMAGE_ALLOWANCE_DB = 3.0
TRANSLATE_BOUND_DB = QUALITY_BOUND_DB + LARGE_IMAGE_ALLOWANCE_DB
ROUNDS = 2
MAX_ROUNDS = 25
MIN_SECONDS = 1.0  # timed per candidate, for runs quick enough
TRAIN_PROBE_SIZE = 64
TRAIN_PROBE_BATCH = 4
_CPU = torch.device("cpu")
Run = Callable[[], torch.Tensor]


def psnr_db(output: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR on the [0, 1] scale of two outputs in [-1, 1]; None when identical."""
    mse = float(((output.float() - reference.float()) / 2).square().mean())
    return round(10 * float(np.log10(1 / mse)), 2) if mse > 0 else None


def time_round_robin(runs: dict[tuple[str, str], Run], rounds: int) -> tuple[dict, dict]:
    """Warm each run up (its output kept), then time rounds in turn: (outputs, fastest seconds). At least
    ``rounds`` rounds, more for quick runs (up to ``MAX_ROUNDS``, ~``MIN_SECONDS`` of each), so that a
    millisecond-scale step is not decided on two samples."""
    outputs = {}
    slowest = 0.0
    for name, run in runs.items():
        started = time.perf_counter()
        outputs[name] = run()
        slowest = max(slowest, time.perf_counter() - started)
    rounds = min(MAX_ROUNDS, max(rounds, math.ceil(MIN_SECONDS / max(slowest, 1e-6))))
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return outputs, best


def measurements(outputs: dict, best: dict, reference: tuple[str, str]) -> list[Measurement]:
    """Each run's fastest time and its PSNR against ``reference``: the worst over the runs' outputs (a list
    of outputs, one per probe scene, or one output)."""
    def worst(name: tuple[str, str]) -> float | None:
        pairs = zip(as_list(outputs[name]), as_list(outputs[reference]), strict=True)
        values = [psnr_db(output, expected) for output, expected in pairs]
        return None if all(v is None for v in values) else min(v for v in values if v is not None)

    return [Measurement(backend=backend, precision=precision, ms=round(1000 * best[(backend, precision)], 1),
                        psnr_db=worst((backend, precision)))
            for backend, precision in outputs]


def as_list(output: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return output if isinstance(output, list) else [output]


def probe_inputs(channels: int, size: int, count: int = QUALITY_SCENES) -> list[torch.Tensor]:
    """``count`` different synthetic scenes (one seeded generator), as 1 x C x size x size tensors."""
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, size) for _ in range(count)]
    return [pil_to_tensor(image.convert("L") if channels == 1 else image)[None] for image in scenes]


def torch_run(net: nn.Module, x: torch.Tensor, precision: str) -> Run:
    """``net`` on ``x`` at ``precision`` as ``Translator`` runs it (bf16: a channels_last copy)."""
    return torch_forward(net, precision, lambda: x)


def torch_forward(net: nn.Module, precision: str, inputs: Callable[[], torch.Tensor]) -> Run:
    """``net`` at ``precision`` as ``Translator`` runs it (bf16: a channels_last copy), on ``inputs()``."""
    memory_format = torch.channels_last if precision == "bf16" else torch.contiguous_format
    net = copy.deepcopy(net).eval().to(memory_format=memory_format)

    def run() -> torch.Tensor:
        with torch.no_grad(), autocast(_CPU, precision):  # type: ignore[arg-type]
            return net(inputs().contiguous(memory_format=memory_format)).float()
    return run


def translate_candidates(translator: Translator, *, host: HostIdentity, cache_dir: Path | None,
                         size: int = PROBE_SIZE, rounds: int = ROUNDS) -> list[Measurement]:
    """Time torch fp32/bf16 and OpenVINO fp32/bf16 on ``translator``'s A->B generator (CPU) on the first
    probe scene; their PSNR against torch fp32 is the worst over ``QUALITY_SCENES`` scenes."""
    net = translator.generator("AtoB")
    channels, multiple = translator.input_channels("AtoB"), translator.multiple("AtoB")
    side = max(multiple, size // multiple * multiple)
    scenes = probe_inputs(channels, side)
    current = [scenes[0]]  # the scene every run reads: the first while timing, each in turn for quality
    runs: dict[tuple[str, str], Run] = {("torch", p): torch_forward(net, p, lambda: current[0])
                                        for p in ("fp32", "bf16")}
    try:
        import_openvino()
        model = cached_model(cache_dir, "fp32", model_key(net, host, variant="fp32"),
                             lambda: convert(net, channels=channels, multiple=multiple))
        for precision in ("fp32", "bf16"):
            request = compile_model(model, precision, host.threads).create_infer_request()
            runs[("openvino", precision)] = lambda request=request: torch.from_numpy(
                np.array(request.infer({0: current[0].numpy()})[0]))
    except Exception as exc:  # noqa: BLE001 - auto then chooses among the torch paths
        logger.warning("OpenVINO could not be measured (%s): auto chooses among the torch paths",
                       str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    first, best = time_round_robin(runs, rounds)
    outputs: dict[tuple[str, str], list[torch.Tensor]] = {name: [output] for name, output in first.items()}
    for scene in scenes[1:]:
        current[0] = scene
        for name, run in runs.items():
            outputs[name].append(run())
    return measurements(outputs, best, ("torch", "fp32"))


def train_candidates(model_cfg: ModelConfig, *, size: int, batch: int, rounds: int = ROUNDS) -> list[Measurement]:
    """Time a generator + discriminator training step in fp32 and bf16 on the CPU (the global RNGs are
    left as they were); the PSNR is the generator's forward pass in bf16 against fp32."""
    state = capture_rng_state()
    try:
        torch.manual_seed(0)
        generator, discriminator = generator_from_config(model_cfg), discriminator_from_config(model_cfg)
        x = torch.rand(batch, model_cfg.input_nc, size, size) * 2 - 1
        runs = {("torch", p): _train_step(generator, discriminator, x, p) for p in ("fp32", "bf16")}
        _, best = time_round_robin(runs, rounds)
        outputs = {("torch", p): torch_run(generator, x[:1], p)() for p in ("fp32", "bf16")}
    finally:
        restore_rng_state(state)
    return measurements(outputs, best, ("torch", "fp32"))


def _train_step(generator: nn.Module, discriminator: nn.Module, x: torch.Tensor, precision: str) -> Run:
    """One step of copies of the nets at ``precision`` (bf16: channels_last, as ``CycleGAN`` trains)."""
    memory_format = torch.channels_last if precision == "bf16" else torch.contiguous_format
    g = copy.deepcopy(generator).train().to(memory_format=memory_format)
    d = copy.deepcopy(discriminator).train().to(memory_format=memory_format)
    optimizer = torch.optim.Adam([*g.parameters(), *d.parameters()], lr=1e-4)
    x = x.contiguous(memory_format=memory_format)

    def run() -> torch.Tensor:
        with autocast(_CPU, precision):  # type: ignore[arg-type]
            fake = g(x)
            loss = d(fake).float().square().mean() + (fake.float() - x).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return run
