"""The OpenVINO model cache: converted (and quantized) generators on disk, so a process does not convert
again what another one on this machine converted.

``cached_model(cache_dir, variant, key, build)`` keeps ``build()``'s model in
``<cache_dir>/openvino/<variant>-<digest of key>/``: ``model.xml`` + ``model.bin`` (fp32 weights kept
exact) and ``entry.json`` (the key and each file's sha256), built in an owned temporary folder and renamed
into place. The key (``model_key``) is the generator's weights, the CPU (model, flags, architecture) and
the library versions; an entry whose key or digests do not match is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan_core.atomic import exclusive, owned_temp, replace_folder, sweep_stale_temps
from cyclegan_core.inference.backends.host import HostIdentity, digest
from cyclegan_core.inference.backends.libraries import import_openvino

logger = logging.getLogger(__name__)

MODEL_FOLDER = "openvino"
ENTRY_FILE = "entry.json"
FILES = ("model.xml", "model.bin")


def weights_digest(net: nn.Module) -> str:
    """sha256[:16] of a network's parameters and buffers (names, dtypes, shapes, values)."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        hasher.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return hasher.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _read_entry(folder: Path, key: dict[str, Any]) -> Any | None:
    """The cached model in ``folder`` when its entry matches ``key`` and its files their digests; else None
    (a corrupt or foreign entry is logged and rebuilt by the caller)."""
    if not folder.is_dir():
        return None
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        if entry.get("key") != key:
            raise ValueError("its key differs (another model, library version or CPU)")
        for name in FILES:
            if _file_sha256(folder / name) != entry["files"][name]:
                raise ValueError(f"{name} does not match its sha256")
        return import_openvino().Core().read_model(str(folder / FILES[0]))
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it is rebuilt
        logger.warning("OpenVINO model cache %s is corrupt or stale (%s): rebuilding it", folder, exc)
        return None


def cached_model(cache_dir: Path | None, variant: str, key: dict[str, Any], build: Callable[[], Any]) -> Any:
    """The OpenVINO model of ``key`` from ``cache_dir`` (``build()`` and kept there when missing or corrupt;
    None or an unwritable folder: built, not kept). One process builds, the others wait and read."""
    if cache_dir is None:
        return build()
    root = cache_dir / MODEL_FOLDER
    folder = root / f"{variant}-{digest(sorted(key.items()))}"
    with ExitStack() as stack:
        try:  # one process converts, the others (Ray actors on this node) wait here, then read
            stack.enter_context(exclusive(root / f".{folder.name}.lock"))
        except OSError as exc:
            logger.warning("cannot write the OpenVINO model cache %s (%s): converting without keeping it", root, exc)
            return build()
        model = _read_entry(folder, key)
        if model is not None:
            return model
        started = time.perf_counter()
        model = build()
        logger.info("built the %s OpenVINO model in %.1fs; keeping it in %s", variant, time.perf_counter() - started,
                    folder)
        ov = import_openvino()
        sweep_stale_temps(root)
        try:
            with owned_temp(root, folder.name, folder=True) as tmp:
                ov.save_model(model, str(tmp / FILES[0]), compress_to_fp16=False)  # keep fp32 weights exact
                files = {name: _file_sha256(tmp / name) for name in FILES}
                (tmp / ENTRY_FILE).write_text(json.dumps({"key": key, "files": files}, indent=1))
                replace_folder(tmp, folder)
        except OSError as exc:
            logger.warning("cannot keep the OpenVINO model in %s (%s): the next process converts again", folder, exc)
        return model


def model_key(
    net: nn.Module, host: HostIdentity, *, variant: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a cached model depends on: the weights, the CPU and the library versions (not the thread count)."""
    return {"weights": weights_digest(net), "variant": variant, "cpu": host.cpu, "cpu_flags": host.cpu_flags,
            "machine": host.machine, "torch": host.torch, "openvino": host.openvino, **(extra or {})}


