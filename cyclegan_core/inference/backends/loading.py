"""``load_translator``: a model loaded for inference on the backend and precision asked for, or measured.

On CUDA ``auto`` is torch bf16. On the CPU an explicit pair is built as asked (``torch fp32`` is the
official computation); ``auto`` in either place reads this machine's measured decision for the model's
generator architecture (``decision.decide``, measuring it the first time: ``probe``) and takes the
fastest path within 40 dB of fp32 that fits what was fixed, logging one line saying what and why.
int8 (OpenVINO + NNCF) only on request, with calibration images. OpenVINO missing or failing to convert
or compile falls back to torch with one warning line. ``training_precision`` is the same rule for
``train.precision: auto`` on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.inference.backends import openvino_runtime
from cyclegan_core.inference.backends.decision import NoCandidate, choose, decide, explain
from cyclegan_core.inference.backends.host import HostIdentity, this_host
from cyclegan_core.inference.backends.interface import QUALITY_BOUND_DB, TranslatorLike, check_choice
from cyclegan_core.inference.backends.probe import (
    PROBE_SIZE,
    QUALITY_SCENES,
    ROUNDS,
    TRAIN_PROBE_BATCH,
    TRAIN_PROBE_SIZE,
    TRANSLATE_BOUND_DB,
    train_candidates,
    translate_candidates,
)
from cyclegan_core.inference.translator import Translator
from cyclegan_core.precision import ResolvedPrecision

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The user's cache folder for decisions and converted models, when the entry point names none."""
    return Path.home() / ".cache" / "cyclegan"


def architecture(config: ModelConfig) -> dict[str, str | int]:
    """What a generator's speed depends on (not its weights)."""
    return {"generator": config.generator, "ngf": config.ngf, "norm": config.norm, "input_nc": config.input_nc,
            "output_nc": config.output_nc}


def load_translator(model: str | Path, *, backend: str = "auto", precision: str = "auto",
                    device: str | torch.device | None = None, memory_budget: int | None = None,
                    cache_dir: Path | None = None,
                    calibration: Sequence[Image.Image] | None = None) -> TranslatorLike:
    """Load ``model`` (what ``Translator.from_pretrained`` reads) to translate with ``backend`` ("auto",
    "torch", "openvino") at ``precision`` ("auto", "fp32", "bf16", "fp16", "int8"). ``device`` None: CUDA
    when available, else the CPU. ``cache_dir``: where the measured decision and the converted OpenVINO
    models are kept (None: ``default_cache_dir()``). ``calibration``: images of the model's input domain
    for int8. Unknown or impossible choices raise ValueError naming the choices."""
    check_choice(backend, precision)
    translator = Translator.from_pretrained(model, device=device, memory_budget=memory_budget)
    return with_backend(translator, backend=backend, precision=precision, cache_dir=cache_dir,
                        calibration=calibration)


def with_backend(translator: Translator, *, backend: str = "auto", precision: str = "auto",
                 cache_dir: Path | None = None, calibration: Sequence[Image.Image] | None = None,
                 host: HostIdentity | None = None) -> TranslatorLike:
    """``translator`` (torch, on its device) set up as ``load_translator`` describes. ``host`` None: this
    process's identity (tests give another CPU's)."""
    check_choice(backend, precision)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    if translator.device.type != "cpu":
        if backend == "openvino" or precision == "int8":
            raise ValueError(f"backend openvino runs on the CPU; on {translator.device} use backend torch "
                             "(precision fp32, bf16 or fp16)")
        return _torch(translator, "bf16" if precision == "auto" else precision,
                      f"auto on {translator.device.type}: bf16 autocast" if precision == "auto" else "as asked")
    if precision == "int8" and not calibration:
        raise ValueError("precision int8 needs calibration images of the model's input domain")
    if precision in ("int8", "fp16") and backend == "auto":
        backend = "openvino" if precision == "int8" else "torch"  # the one backend that computes it
    host = this_host() if host is None else host
    if backend != "auto" and precision != "auto":
        reason = "the official computation" if (backend, precision) == ("torch", "fp32") else "as asked"
        return _build(translator, backend, precision, reason, cache_dir=cache_dir, host=host, calibration=calibration)
    decision, source = decide(
        cache_dir, kind="translate", host=host, architecture=architecture(translator.config),
        probe=(f"{PROBE_SIZE}x{PROBE_SIZE}, batch 1, fastest of {ROUNDS} calls after a warm-up; the worst PSNR of "
               f"{QUALITY_SCENES} scenes: {TRANSLATE_BOUND_DB:g} dB here keeps {QUALITY_BOUND_DB:g} dB at 4x the side"),
        measure=lambda: translate_candidates(translator, host=host, cache_dir=cache_dir))
    try:
        choice = choose(decision.measurements, backend=backend, precision=precision, bound_db=TRANSLATE_BOUND_DB)
    except NoCandidate as exc:  # OpenVINO asked for but not measurable here
        fallback = "fp32" if precision == "auto" else precision
        logger.warning("%s: translating with torch %s", exc, fallback)
        return _torch(translator, fallback, f"{backend} could not run here")
    reason = explain(choice, decision, source, backend=backend, precision=precision, bound_db=TRANSLATE_BOUND_DB)
    logger.info("translating with %s (%s)", choice.label, reason)
    fallback = choose(decision.measurements, backend="torch",  # should OpenVINO fail: the fastest torch path
                      precision=precision if precision in ("fp32", "bf16") else "auto",
                      bound_db=TRANSLATE_BOUND_DB).precision
    return _build(translator, choice.backend, choice.precision, reason, cache_dir=cache_dir, host=host,
                  calibration=calibration, fallback=fallback)


def _torch(translator: Translator, precision: str, reason: str) -> Translator:
    translator.precision, translator.reason = precision, reason
    return translator


def _build(translator: Translator, backend: str, precision: str, reason: str, *, cache_dir: Path, host: HostIdentity,
           calibration: Sequence[Image.Image] | None, fallback: str | None = None) -> TranslatorLike:
    """``translator`` on ``backend`` at ``precision``; OpenVINO failing: torch at ``fallback`` (None: bf16 for
    bf16, else fp32), with one warning."""
    if backend == "torch":
        return _torch(translator, precision, reason)
    try:
        return openvino_runtime.build(translator, precision=precision, reason=reason, cache_dir=cache_dir, host=host,
                                      calibration=calibration, fallback=fallback)
    except Exception as exc:  # noqa: BLE001 - missing, conversion or compilation: torch translates instead
        fallback = fallback or ("bf16" if precision == "bf16" else "fp32")
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("OpenVINO %s could not be set up (%s: %s): translating with torch %s instead", precision,
                       type(exc).__name__, detail, fallback)
        return _torch(translator, fallback, f"OpenVINO {precision} failed: {detail}")


def training_precision(model_cfg: ModelConfig, *, crop_size: int, batch_size: int, cache_dir: Path | None,
                       host: HostIdentity | None = None) -> tuple[ResolvedPrecision, str]:
    """What ``train.precision: auto`` runs on this CPU: the faster of fp32 and bf16 training steps measured
    here (bf16 only within 40 dB of fp32), with the reason (one line). Measured once per host and
    architecture (``decide``); the caller sets the thread count first."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    host = this_host() if host is None else host
    size, batch = min(crop_size, TRAIN_PROBE_SIZE), min(batch_size, TRAIN_PROBE_BATCH)
    arch = {**architecture(model_cfg), "discriminator": model_cfg.discriminator, "ndf": model_cfg.ndf,
            "n_layers_d": model_cfg.n_layers_d, "size": size, "batch": batch}
    decision, source = decide(cache_dir, kind="train", host=host, architecture=arch,
                              probe=f"a G+D step at {size}x{size}, batch {batch}, fastest of {ROUNDS} after a warm-up",
                              measure=lambda: train_candidates(model_cfg, size=size, batch=batch))
    choice = choose(decision.measurements, backend="torch")
    return choice.precision, explain(choice, decision, source)  # type: ignore[return-value]
