"""The model replicas: one registered model version each, loaded in the constructor, translating the
images of concurrent requests in batches (``@serve.batch``; images of equal size go through the network
together, as ``Translator.__call__`` groups them).

``load_for_serving`` is the one place a replica turns a downloaded model folder into a translator:
``cyclegan_core.inference.backends.load_translator`` with the serve settings' backend, precision, device, memory
budget and cache folder (so ``auto`` is what this machine measured, as for ``cyclegan translate``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from pipelines.serving.settings import (
    MODEL_DEPLOYMENT,
    ServeSettings,
    model_deployment_options,
    settings_fingerprint,
)

if TYPE_CHECKING:
    from cyclegan_core.inference.backends import TranslatorLike

# Serve sets up this logger in every replica (its log file and stderr; a pod's log on Kubernetes)
log = logging.getLogger("ray.serve")


class ModelLoadError(RuntimeError):
    """A version's replica could not download or load its model; the message is one line."""


def load_for_serving(folder: Path, settings: ServeSettings) -> TranslatorLike:
    """The translator of a downloaded model folder, as the serve settings ask (backend, precision,
    device, memory budget, cache folder of the measured decision and the converted models)."""
    from cyclegan_core.inference.backends import load_translator

    return load_translator(folder, backend=settings.backend, precision=settings.precision, device=settings.device,
                           memory_budget=settings.memory_budget, cache_dir=settings.cache_dir)


@dataclass(frozen=True)
class TranslateItem:
    """One image of a request: HWC uint8 RGB pixels, the direction and the request's memory budget."""

    image: np.ndarray
    direction: str
    memory_budget: int | None


@dataclass(frozen=True)
class Translated:
    """One image's answer: PNG bytes, or why it could not be translated (``client_error``: a 400)."""

    version: str
    png: bytes | None = None
    error: str | None = None
    client_error: bool = False


def with_budget(translator: Any, budget: int | None) -> Any:
    """``translator``, or a copy with the request's budget, never above the replica's own budget."""
    if budget is None:
        return translator
    limited = copy.copy(translator)
    limited.memory_budget = budget if translator.memory_budget is None else min(budget, translator.memory_budget)
    return limited


def describe_budget(budget: int | None) -> str:
    from cyclegan_core.inference.memory import format_bytes

    return "the replica's default: half the available memory" if budget is None else format_bytes(budget)


def translate_items(translator: Any, items: Sequence[TranslateItem], version: str) -> list[Translated]:
    """Translate a batch of requests' images, grouped by direction and budget (the translator groups each
    group by size); answers in the items' order. An image over the budget is translated by tiles; a group
    that fails with a ValueError/TypeError (a direction the model lacks, an image not even tiles of the
    budget fit) answers its own item with that error (a 400), not the others; other errors propagate."""
    from PIL import Image

    from cyclegan_core.inference.memory import MemoryBudgetError
    from pipelines.registry.pyfunc import encode_png

    def run(indices: list[int], direction: str, budget: int | None) -> None:
        limited = with_budget(translator, budget)
        images = [Image.fromarray(items[i].image) for i in indices]
        try:
            outputs = limited(images, direction=direction, batch_size=len(images))
        except (ValueError, TypeError) as exc:
            if len(indices) > 1:  # one request's image must not fail the others batched with it
                for i in indices:
                    run([i], direction, budget)
                return
            error = str(exc)
            if isinstance(exc, MemoryBudgetError):
                error = f"too large for the memory budget ({describe_budget(limited.memory_budget)}): {exc}"
            answers[indices[0]] = Translated(version, error=error, client_error=True)
            return
        for i, output in zip(indices, outputs, strict=True):
            answers[i] = Translated(version, png=encode_png(output))

    answers: list[Translated | None] = [None] * len(items)
    groups: dict[tuple[str, int | None], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((item.direction, item.memory_budget), []).append(index)
    for (direction, budget), indices in groups.items():
        run(indices, direction, budget)
    return [answer for answer in answers if answer is not None]


def load_error_reason(status_message: str) -> str:
    """The one line a replica's ``ModelLoadError`` left in Serve's deployment status message (its last
    line otherwise): what ``/served-version`` reports as the failure's reason."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in status_message.splitlines()]
    for line in reversed(lines):
        found = re.search(r"ModelLoadError: (.*)$", line)
        if found:
            return found.group(1)
    return next((line for line in reversed(lines) if line), "no reason given")


class ModelReplica:
    """A Serve replica of one model version (``model_app`` wraps it in ``serve.deployment``)."""

    def __init__(self, settings: ServeSettings, version: str) -> None:
        from cyclegan_core.atomic import scratch_folder
        from cyclegan_core.inference.model_source import parse_model_source
        from pipelines.registry.sources import fetch_model

        self.settings, self.version = settings, version
        _set_torch_threads(settings.torch_threads)  # before loading: OpenVINO compiles for torch's thread count
        # one inference thread: batches run one at a time, each on the replica's torch threads
        self._executor = ThreadPoolExecutor(max_workers=1, initializer=_set_torch_threads,
                                            initargs=(settings.torch_threads,))
        began = time.monotonic()
        source = parse_model_source(f"models:/{settings.model}/{version}")
        try:
            with scratch_folder("serve", name=f"v{version}") as scratch:
                fetched = fetch_model(source, scratch, tracking_uri=settings.tracking_uri)
                self.translator = load_for_serving(fetched.path, settings)
        except Exception as exc:  # whatever failed, Serve reports this line and keeps the old version
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ModelLoadError(f"{settings.model} v{version} failed to load: {reason}") from exc
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.translate_batch.set_max_batch_size(settings.max_batch_size)
        self.translate_batch.set_batch_wait_timeout_s(settings.batch_wait_s)
        log.info("%s v%s loaded in %.1f s: %s", settings.model, version, time.monotonic() - began,
                 self.translator.describe())

    def describe(self) -> dict[str, str]:
        return {"model": self.settings.model, "version": self.version, "loaded_at": self.loaded_at,
                "backend": self.translator.describe(), "settings": settings_fingerprint(self.settings)}

    async def translate(self, image: np.ndarray, direction: str, memory_budget: int | None) -> Translated:
        return await self.translate_batch(TranslateItem(image, direction, memory_budget))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set from the settings in __init__
    async def translate_batch(self, items: list[TranslateItem]) -> list[Translated]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, translate_items, self.translator, items, self.version)


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def model_app(settings: ServeSettings, version: str) -> serve.Application:
    """The model replicas of ``version`` as a Serve application (deployed by the rollout watcher)."""
    deployment = serve.deployment(name=MODEL_DEPLOYMENT)(ModelReplica)
    return deployment.options(**model_deployment_options(settings)).bind(settings, version)
