"""The Ray Data part of batch translation: an actor pool that holds the translator, one status row per input.

``run_on_ray`` turns the work items into a dataset (one block per batch) and maps ``TranslateActor``
over it: one actor per GPU when the run uses GPUs, CPU actors otherwise. Each actor loads the model
once from the files the driver put in the object store (no MLflow access on the nodes), builds its own
S3 client from its node's credential chain (nothing secret travels through Ray) and its backend
(``load_translator``: the node's measured ``auto`` choice, OpenVINO on CPU actors here), and for each batch
reads the inputs, decodes them (a bad image becomes a quarantine record, never an exception),
translates (images over the memory budget go through the tiled path; one the budget cannot translate
even by tiles fails alone with the budget's error, and the next run retries it), writes the PNGs with
their metadata, then the batch's ledger; it returns one row per input. The driver logs a line per batch.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cyclegan_core.inference.memory import MemoryBudgetError
from pipelines.batch.planning import (
    InputRecord,
    Ledger,
    ModelIdentity,
    WorkItem,
    ledger_path,
    quarantine_path,
)
from pipelines.batch.stores import Location, open_store

logger = logging.getLogger(__name__)

ROW_FIELDS = ("source", "etag", "size", "status", "output", "reason")


@dataclass(frozen=True)
class ActorSpec:
    """What every actor needs, none of it secret: where to read and write, the model's identity (for the
    outputs' metadata), the direction and the translation settings."""

    source: Location
    root: Location
    model: ModelIdentity
    direction: str
    batch_size: int
    memory_budget: int | None
    device: str
    threads: int
    backend: str = "auto"
    precision: str = "auto"
    cache_dir: Path | None = None  # None: each node's default (cyclegan_core.inference.backends.default_cache_dir)
    model_file: str = ""  # the file among the model's files to load (an official .pth); "": their folder


@dataclass(frozen=True)
class BatchProgress:
    """The driver's view after a finished batch."""

    done: int
    total: int
    translated: int
    quarantined: int
    errors: int
    images_per_second: float

    def line(self) -> str:
        remaining = (self.total - self.done) / self.images_per_second if self.images_per_second else 0.0
        return (f"{self.done}/{self.total} inputs done ({self.translated} translated, {self.quarantined} "
                f"quarantined, {self.errors} failed), {self.images_per_second:.1f} images/s, "
                f"ETA {remaining:.0f}s")


def load_model_files(model: Path) -> dict[str, bytes]:
    """A model folder as {relative path: bytes}, or a model file as {its name: bytes}, to ship through the
    object store."""
    if model.is_file():
        return {model.name: model.read_bytes()}
    return {path.relative_to(model).as_posix(): path.read_bytes() for path in sorted(model.rglob("*"))
            if path.is_file()}


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class TranslateActor:
    """A Ray Data callable class: the translator, loaded once, and the two stores."""

    def __init__(self, model_files: dict[str, bytes], spec: ActorSpec) -> None:
        import torch

        from cyclegan_core.atomic import scratch_folder
        from cyclegan_core.inference.backends import load_translator
        from pipelines.clients.ray_cluster import NodeCredentialsError, node_credentials_problem

        uses = [f"{what} {where.uri}" for what, where in (("reading", spec.source), ("writing", spec.root))
                if where.is_s3]
        problem = node_credentials_problem(uses, process="a batch translation actor")
        if problem:
            raise NodeCredentialsError(problem)
        torch.set_num_threads(max(1, spec.threads))
        with scratch_folder("batch", name="model") as folder:  # deleted once loaded; a killed actor's is swept
            for rel, data in model_files.items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
            # the node's measured auto decision and converted models are reused: a new actor does not convert again
            self.translator = load_translator(folder / spec.model_file, backend=spec.backend, precision=spec.precision,
                                              device=spec.device, memory_budget=spec.memory_budget,
                                              cache_dir=spec.cache_dir)
        self.direction = spec.direction if spec.direction in self.translator.directions else "AtoB"
        self.spec = spec
        self.source = open_store(spec.source)
        self.root = open_store(spec.root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        items = [WorkItem(source=str(s), etag=str(e), size=int(n), output=str(o), previous=str(p)) for s, e, n, o, p
                 in zip(batch["source"], batch["etag"], batch["size"], batch["output"], batch["previous"], strict=True)]
        rows = self.translate_items(items)
        records = [InputRecord.model_validate(row) for row in rows if row["status"] != "error"]
        if records:  # the batch is finished: what the next run reads when this one dies before its manifest
            self.root.write(ledger_path(f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"),
                            Ledger(records=records).model_dump_json().encode(), content_type="application/json")
        return {name: [row.get(name) or ("" if name != "size" else 0) for row in rows] for name in ROW_FIELDS}

    def translate_items(self, items: list[WorkItem]) -> list[dict[str, Any]]:
        from cyclegan_core.data.images import InvalidImage, decode_image

        rows: list[dict[str, Any]] = []
        decoded = []
        for item in items:
            row = {"source": item.source, "etag": item.etag, "size": item.size}
            try:
                data = self.source.read(item.source)
                with tempfile.NamedTemporaryFile(suffix=Path(item.source).suffix) as handle:
                    handle.write(data)
                    handle.flush()
                    image = decode_image(handle.name)
            except InvalidImage as exc:
                reason = f"{exc.reason}: {exc.detail}".replace(handle.name, item.source)
                self.quarantine(item, reason)
                rows.append(row | {"status": "quarantined", "reason": reason})
                continue
            except Exception as exc:  # noqa: BLE001 - the row says what failed; the run goes on
                rows.append(row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"})
                continue
            decoded.append((item, image, row))
        if decoded:
            outputs = self.translate_images([image for _, image, _ in decoded])
            for (item, _, row), output in zip(decoded, outputs, strict=True):
                if isinstance(output, MemoryBudgetError):  # a re-run with a larger budget retries it
                    rows.append(row | {"status": "error", "reason": f"{type(output).__name__}: {output}"})
                    continue
                try:
                    self.write_output(item, png_bytes(output))
                except Exception as exc:  # noqa: BLE001
                    rows.append(row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"})
                    continue
                rows.append(row | {"status": "translated", "output": item.output})
        return rows

    def translate_images(self, images: list[Any]) -> list[Any]:
        """The translations of ``images`` in order; an image the memory budget cannot translate even by
        tiles is its ``MemoryBudgetError`` instead (the batch's other images are translated)."""
        try:
            return self.translator(images, direction=self.direction, batch_size=self.spec.batch_size)
        except MemoryBudgetError as exc:
            if len(images) == 1:
                return [exc]
        return [output for image in images for output in self.translate_images([image])]

    def metadata(self, item: WorkItem) -> dict[str, str]:
        model = self.spec.model
        return {"source-uri": self.spec.source.object_uri(item.source), "source-etag": item.etag,
                "source-size": str(item.size), "model-name": model.name, "model-version": model.version,
                "model-uri": model.resolved_uri, "direction": self.spec.direction}

    def write_output(self, item: WorkItem, data: bytes) -> None:
        self.root.write(item.output, data, metadata=self.metadata(item), content_type="image/png")
        if item.previous == "quarantined":  # it was bad before and is fine now
            self.root.delete(quarantine_path(item.source))

    def quarantine(self, item: WorkItem, reason: str) -> None:
        record = {"source_uri": self.spec.source.object_uri(item.source), **self.metadata(item), "reason": reason}
        self.root.write(quarantine_path(item.source), json.dumps(record, indent=2).encode(),
                        content_type="application/json")
        if item.previous == "translated":  # its old output translated content that no longer exists
            self.root.delete(item.output)


@dataclass(frozen=True)
class PoolSize:
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float


def pool_size(*, actors: int | None, use_gpu: bool | None, cpus_per_actor: float, batches: int,
              cluster: dict[str, float]) -> PoolSize:
    """One actor per GPU when the run uses GPUs (``use_gpu`` None: when the cluster has any), else one
    per ``cpus_per_actor`` CPUs; ``actors`` overrides the count; never more actors than batches."""
    gpus = int(cluster.get("GPU", 0))
    gpu = gpus > 0 if use_gpu is None else use_gpu
    if gpu and gpus == 0 and actors is None:
        raise ValueError("use_gpu is set but the Ray cluster has no GPU; set actors to wait for GPU nodes, "
                         "or turn use_gpu off")
    count = actors or (gpus if gpu else max(1, int(cluster.get("CPU", 1) // cpus_per_actor)))
    return PoolSize(max(1, min(count, batches)), 1.0 if gpu else 0.0, cpus_per_actor)


def iter_rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    for values in zip(*(batch[name] for name in names), strict=True):
        yield {
            name: value.item() if hasattr(value, "item") else value for name, value in zip(names, values, strict=True)
        }


def run_on_ray(items: list[WorkItem], spec: ActorSpec, model_files: dict[str, bytes], pool: PoolSize, *,
               on_batch: Callable[[BatchProgress], None] | None = None) -> list[dict[str, Any]]:
    """Translate ``items`` on the actor pool; returns one status row per item as batches finish."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver logs its own line per batch
    context.print_on_execution_start = False
    blocks = max(1, math.ceil(len(items) / spec.batch_size))
    dataset = ray.data.from_items([item.model_dump() for item in items], override_num_blocks=blocks)
    translated = dataset.map_batches(  # Ray Data ships the constructor arguments through the object store
        TranslateActor, fn_constructor_args=(model_files, spec), batch_size=spec.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor,
    )
    rows: list[dict[str, Any]] = []
    counts = {"translated": 0, "quarantined": 0, "error": 0}
    started = time.perf_counter()
    first: tuple[float, int] | None = None  # the rate is taken after the first batch: actor start is not per image
    for batch in translated.iter_batches(batch_size=None, batch_format="numpy"):
        for row in iter_rows(batch):
            rows.append(row)
            counts[row["status"]] += 1
        now = time.perf_counter()
        if first is None:
            first, rate = (now, len(rows)), len(rows) / max(now - started, 1e-9)
        else:
            rate = (len(rows) - first[1]) / max(now - first[0], 1e-9)
        progress = BatchProgress(len(rows), len(items), counts["translated"], counts["quarantined"], counts["error"],
                                 rate)
        logger.info("batch translation: %s", progress.line())
        if on_batch is not None:
            on_batch(progress)
    return rows
