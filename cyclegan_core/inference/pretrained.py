"""Generator files: the exported folder format (config.json + model.safetensors) and official .pth files.

An exported generator is a folder::

    G_AB/config.json        {"format": "cyclegan-generator", "format_version": 1, "direction": "AtoB",
                             "model": <ModelConfig as JSON>}
    G_AB/model.safetensors  the generator's state dict

An exported model is a folder holding ``G_AB/`` and ``G_BA/``. Folders are written into a temporary
sibling and renamed into place, so a reader never sees a half-written export and an existing export
is replaced only once the new one is complete. An official ``latest_net_G_A.pth`` is read with
``weights_only=True`` and its architecture inferred (``cyclegan_core.networks.official``). Every load
is strict; failures are ``GeneratorLoadError`` naming the file and what was wrong.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, get_args

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cyclegan_core.atomic import owned_temp, replace_folder, sweep_stale_temps
from cyclegan_core.config import Direction, ModelConfig
from cyclegan_core.networks import generator_from_config
from cyclegan_core.networks.official import (
    ArchitectureError,
    clean_official_state,
    compare_layout,
    describe_config,
    infer_generator_config,
)

logger = logging.getLogger(__name__)

FORMAT = "cyclegan-generator"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DIRECTIONS: tuple[str, ...] = get_args(Direction)
DIRECTION_FOLDERS = {"AtoB": "G_AB", "BtoA": "G_BA"}


class GeneratorLoadError(RuntimeError):
    """A generator file or folder could not be loaded; the message names it and what was wrong."""


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def swapped_channels(cfg: ModelConfig) -> ModelConfig:
    """The config of the opposite generator (B -> A): ``input_nc`` and ``output_nc`` exchanged."""
    return cfg.model_copy(update={"input_nc": cfg.output_nc, "output_nc": cfg.input_nc})


# --- writing --------------------------------------------------------------------------------------


def _write_generator_files(module: nn.Module, cfg: ModelConfig, folder: Path, direction: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu").contiguous() for key, value in unwrap(module).state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "direction": direction})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "direction": direction,
              "model": cfg.model_dump(mode="json")}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def save_generators(generators: dict[str, nn.Module], cfg: ModelConfig, dest: Path) -> Path:
    """Write generators by direction into ``dest`` atomically; returns ``dest``.

    ``cfg`` describes the A->B generator (a B->A one is stored with ``input_nc``/``output_nc``
    swapped, so its config rebuilds it). Both directions: ``dest/G_AB`` and ``dest/G_BA``; one
    direction: a single generator folder at ``dest``.
    """
    for direction in generators:
        check_direction(direction)
    dest = Path(dest)
    sweep_stale_temps(dest.parent, name=dest.name)
    with owned_temp(dest.parent, dest.name, folder=True) as build:
        for direction, module in generators.items():
            stored = cfg if direction == "AtoB" else swapped_channels(cfg)
            folder = build / DIRECTION_FOLDERS[direction] if len(generators) > 1 else build
            _write_generator_files(module, stored, folder, direction)
        replace_folder(build, dest)
    logger.info("saved generator(s) %s to %s", ", ".join(generators), dest)
    return dest


# --- reading --------------------------------------------------------------------------------------


def build_loaded(cfg: ModelConfig, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """The generator of ``cfg`` with ``state`` loaded strictly, in eval mode, on the CPU.

    Building does not move the caller's RNG (initial weights are overwritten anyway).
    """
    with torch.random.fork_rng(devices=[]):
        net = generator_from_config(cfg)
    _, mismatch = compare_layout({key: value.shape for key, value in net.state_dict().items()}, state)
    if mismatch:
        raise GeneratorLoadError(f"{source} does not match the {describe_config(cfg)} architecture; {mismatch}. "
                                 "Check the generator name, norm and ngf it was trained with.")
    net.load_state_dict(state, strict=True)
    return net.eval()


def read_generator_config(folder: Path) -> tuple[ModelConfig, str]:
    """The ModelConfig and direction stored in an exported generator folder."""
    path = folder / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise GeneratorLoadError(f"{folder} is not an exported generator: {CONFIG_FILE} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeneratorLoadError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise GeneratorLoadError(f"{path} is not a {FORMAT} config (format={raw.get('format')!r})"
                                 if isinstance(raw, dict) else f"{path} is not a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise GeneratorLoadError(f"{path} has format_version {raw.get('format_version')!r}; this version of "
                                 f"cyclegan_core reads {FORMAT_VERSION}")
    direction = raw.get("direction")
    if direction not in DIRECTIONS:
        raise GeneratorLoadError(f"{path}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    try:
        return ModelConfig.model_validate(raw.get("model")), direction
    except ValidationError as exc:
        raise GeneratorLoadError(f"{path}: invalid model config: {exc}") from exc


def load_generator_folder(folder: Path) -> tuple[nn.Module, ModelConfig]:
    """An exported generator folder as (module in eval mode on the CPU, the ModelConfig that rebuilds it)."""
    cfg, _ = read_generator_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise GeneratorLoadError(f"{folder} is not a complete export: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise GeneratorLoadError(f"{weights} is not a readable safetensors file ({exc})") from exc
    return build_loaded(cfg, state, weights), cfg


def _load_failure(exc: Exception) -> str:
    """The informative part of a torch.load error (its weights_only preamble is advice we do not want)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), flags=re.DOTALL)
    if found:
        reason = found.group(1).split(". ")[0].strip()
        return f"weights_only=True refused it: {reason}; only plain tensor state dicts are loaded"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no detail'}"


def read_state_dict(pth: Path) -> dict[str, torch.Tensor]:
    """The tensor state dict of a ``.pth`` file (plain, or nested under ``"state_dict"``), on the CPU."""
    if not pth.is_file():
        raise GeneratorLoadError(f"{pth} does not exist or is not a file")
    try:
        state: Any = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / non-checkpoint files
        raise GeneratorLoadError(f"{pth} is not a readable PyTorch checkpoint ({_load_failure(exc)})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        hint = ("; a cyclegan_core training checkpoint loads with Translator.from_checkpoint"
                if isinstance(state, dict) and "format" in state else "")
        raise GeneratorLoadError(f"{pth} does not hold a state dict of tensors (found {type(state).__name__}){hint}")
    return state


def load_official_generator(pth: Path) -> tuple[nn.Module, ModelConfig]:
    """An official CycleGAN generator checkpoint (``*_net_G_A.pth``) with its inferred ModelConfig.

    The architecture comes from the state dict itself; a state dict that fits no known generator, or
    several, is a ``GeneratorLoadError`` naming the file and the closest candidate's differences.
    """
    pth = Path(pth)
    state = read_state_dict(pth)
    try:
        cfg = infer_generator_config(state)
    except ArchitectureError as exc:
        raise GeneratorLoadError(f"cannot load {pth}: {exc}") from exc
    with torch.device("meta"):
        layout = generator_from_config(cfg)
    net = build_loaded(cfg, clean_official_state(state, layout), pth)
    note = (
        "; U-Net dropout leaves no trace in the weights (off at inference)" if cfg.generator.startswith("unet") else ""
    )
    logger.info("%s: inferred %s%s", pth, describe_config(cfg), note)
    return net, cfg
