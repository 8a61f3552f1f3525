"""Export and load generators: self-describing folders (config.json + model.safetensors) and official .pth.

An exported generator is a folder::

    G_AB/config.json        {"format": "cyclegan-generator", "format_version": 1, "direction": "AtoB",
                             "model": <ModelConfig as JSON>}
    G_AB/model.safetensors  the generator's state dict

An exported model is a folder holding ``G_AB/`` and ``G_BA/``. Folders are written into a temporary
sibling and renamed into place, so a reader never sees a half-written export and an existing export
is replaced only once the new one is complete.

``import_official_generator`` loads a ``latest_net_G_A.pth`` of junyanz/pytorch-CycleGAN-and-pix2pix
(strict), after the same clean-ups the official ``BaseModel.load_networks`` does: the ``module.``
prefix of DataParallel checkpoints and the InstanceNorm ``running_mean``/``running_var``/
``num_batches_tracked`` entries that checkpoints of old PyTorch versions carry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cyclegan_core.config import ModelConfig
from cyclegan_core.networks import GENERATOR_NAMES, generator_from_config

logger = logging.getLogger(__name__)

FORMAT = "cyclegan-generator"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DIRECTIONS = ("AtoB", "BtoA")
DIRECTION_FOLDERS = {"AtoB": "G_AB", "BtoA": "G_BA"}
_LISTED_KEYS = 8  # how many offending keys an error message names


class GeneratorLoadError(RuntimeError):
    """A generator file or folder could not be loaded; the message names it and what was wrong."""


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def _replace_dir_atomically(build: Path, dest: Path) -> None:
    """Move the complete folder ``build`` to ``dest``, replacing what is there."""
    if not dest.exists():
        os.replace(build, dest)
        return
    if not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder; refusing to replace it with an export")
    retired = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dest, retired)
    try:
        os.replace(build, dest)
    except OSError:
        os.replace(retired, dest)  # put the previous export back
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _write_generator_files(module: nn.Module, cfg: ModelConfig, folder: Path, direction: str) -> None:
    state = {key: value.detach().to("cpu").contiguous() for key, value in unwrap(module).state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "direction": direction})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "direction": direction,
              "model": cfg.model_dump(mode="json")}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def save_generator(module: nn.Module, cfg: ModelConfig, dest: Path, *, direction: str) -> Path:
    """Write one generator to the folder ``dest`` (config.json + model.safetensors), atomically.

    ``cfg`` describes the A->B generator; for ``direction="BtoA"`` the stored config has
    ``input_nc``/``output_nc`` swapped so it rebuilds this very network.
    """
    _check_direction(direction)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stored = cfg if direction == "AtoB" else cfg.model_copy(update={"input_nc": cfg.output_nc,
                                                                   "output_nc": cfg.input_nc})
    build = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write_generator_files(module, stored, build, direction)
        _replace_dir_atomically(build, dest)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    logger.info("saved generator %s to %s", direction, dest)
    return dest


def export_generators(model: Any, dest_dir: Path) -> Path:
    """Write ``dest_dir/G_AB`` and ``dest_dir/G_BA`` from a model with ``G_AB``, ``G_BA``, ``model_cfg``.

    The pair is written into a temporary sibling folder and renamed into place together.
    """
    dest_dir = Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.tmp-", dir=dest_dir.parent))
    try:
        for direction, attribute in (("AtoB", "G_AB"), ("BtoA", "G_BA")):
            save_generator(getattr(model, attribute), model.model_cfg, build / DIRECTION_FOLDERS[direction],
                           direction=direction)
        _replace_dir_atomically(build, dest_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    logger.info("exported generators to %s", dest_dir)
    return dest_dir


def _describe_mismatch(source: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                       architecture: str) -> str | None:
    """A readable description of how ``found`` differs from ``expected``, or None if they agree."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{key}: file {tuple(found[key].shape)} vs model {tuple(expected[key].shape)}"
              for key in expected if key in found and found[key].shape != expected[key].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > _LISTED_KEYS else ""
            shown = ", ".join(items[:_LISTED_KEYS]) + more
            problems.append(f"{label}: {shown}")
    if not problems:
        return None
    return (f"{source} does not match the {architecture} architecture; " + "; ".join(problems)
            + ". Check the generator name, norm and ngf the checkpoint was trained with.")


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], source: Path, architecture: str) -> None:
    mismatch = _describe_mismatch(source, net.state_dict(), state, architecture)
    if mismatch:
        raise GeneratorLoadError(mismatch)
    net.load_state_dict(state, strict=True)


def _strip_official_extras(state: dict[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """Drop ``module.`` prefixes and stale InstanceNorm statistics (official ``load_networks`` does too)."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    instance_norms = {name for name, module in net.named_modules() if isinstance(module, nn.InstanceNorm2d)
                      and not module.track_running_stats}
    stale = ("running_mean", "running_var", "num_batches_tracked")
    return {key: value for key, value in state.items()
            if not (key.rpartition(".")[2] in stale and key.rpartition(".")[0] in instance_norms)}


def import_official_generator(pth: Path, *, generator: str = "resnet_9blocks", norm: str = "instance",
                              ngf: int = 64, input_nc: int = 3, output_nc: int = 3) -> nn.Module:
    """Load an official CycleGAN generator checkpoint (``*_net_G_A.pth``) strictly, in eval mode.

    The file is a plain state dict (or one nested under ``"state_dict"``); ``generator``, ``norm`` and
    ``ngf`` must be the options it was trained with (the official test defaults are the defaults here).
    """
    pth = Path(pth)
    cfg = _official_config(pth, generator=generator, norm=norm, ngf=ngf, input_nc=input_nc, output_nc=output_nc)
    if not pth.is_file():
        raise GeneratorLoadError(f"{pth} does not exist or is not a file")
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / non-checkpoint files
        raise GeneratorLoadError(f"{pth} is not a readable PyTorch checkpoint ({_load_failure(exc)})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GeneratorLoadError(f"{pth} does not hold a state dict of tensors (found {type(state).__name__})")
    net = generator_from_config(cfg)
    _load_strict(net, _strip_official_extras(state, net), pth, f"{generator} (norm={norm}, ngf={ngf})")
    logger.info("imported official %s generator from %s", generator, pth)
    return net.eval()


def _load_failure(exc: Exception) -> str:
    """The informative part of a torch.load error (its weights_only preamble is advice we do not want)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), flags=re.DOTALL)
    if found:
        reason = found.group(1).split(". ")[0].strip()
        return f"weights_only=True refused it: {reason}; only plain tensor state dicts are loaded"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no detail'}"


def _official_config(pth: Path, **fields: Any) -> ModelConfig:
    if fields["generator"] not in GENERATOR_NAMES:
        raise GeneratorLoadError(f"cannot import {pth}: unknown generator {fields['generator']!r}; "
                                 f"expected one of {', '.join(GENERATOR_NAMES)}")
    try:
        return ModelConfig(**fields)
    except ValidationError as exc:
        raise GeneratorLoadError(f"cannot import {pth}: invalid options {fields}: {exc}") from exc


def _read_config(folder: Path) -> tuple[ModelConfig, str]:
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


def _load_exported(folder: Path) -> tuple[nn.Module, ModelConfig]:
    cfg, _ = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise GeneratorLoadError(f"{folder} is not a complete export: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise GeneratorLoadError(f"{weights} is not a readable safetensors file ({exc})") from exc
    net = generator_from_config(cfg)
    _load_strict(net, state, weights, f"{cfg.generator} (norm={cfg.norm}, ngf={cfg.ngf})")
    return net, cfg


def resolve_generator_folder(path: Path, direction: str = "AtoB") -> Path:
    """The generator folder to load: ``path`` itself, or ``path/G_AB`` / ``path/G_BA`` for a model folder."""
    _check_direction(direction)
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    candidate = path / DIRECTION_FOLDERS[direction]
    if candidate.is_dir():
        return candidate
    raise GeneratorLoadError(
        f"{path} is neither an exported generator (no {CONFIG_FILE}) nor an exported model "
        f"(no {DIRECTION_FOLDERS[direction]}/ for direction {direction})"
    )


def load_generator(
    path: Path, *, device: str | torch.device = "cpu", direction: str = "AtoB",
    generator: str = "resnet_9blocks", norm: str = "instance", ngf: int = 64,
) -> tuple[nn.Module, ModelConfig]:
    """Load a generator in eval mode on ``device``, with the ModelConfig that rebuilds it.

    ``path`` is an exported generator folder, an exported model folder (``direction`` picks ``G_AB``
    or ``G_BA``), or an official ``.pth`` (then ``generator``, ``norm``, ``ngf`` describe it and
    ``direction`` is ignored: the file is one generator).
    """
    path = Path(path)
    if path.is_dir():
        net, cfg = _load_exported(resolve_generator_folder(path, direction))
    elif path.is_file():
        net = import_official_generator(path, generator=generator, norm=norm, ngf=ngf)
        cfg = ModelConfig(generator=generator, norm=norm, ngf=ngf)
    else:
        raise GeneratorLoadError(f"{path} does not exist (expected an exported generator/model folder or a .pth)")
    return net.to(device).eval(), cfg
