"""What a batch translation run has to do: the output layout, the state of earlier runs, the difference.

Layout under the output location, one folder per model version and direction (a new version never
overwrites an older one's outputs)::

    <output>/<model name>/v<version>/<direction>/<input path without suffix>.png
    <output>/<model name>/v<version>/<direction>/_quarantine/<input path>.json   (the reason)
    <output>/<model name>/v<version>/<direction>/_ledger/<batch id>.json          (written as batches finish)
    <output>/<model name>/v<version>/<direction>/_manifest.json                   (written at the end)

The state of earlier runs is the manifest plus every ledger written since (a run killed before its
manifest left its ledgers); an input is done when that state holds it with the same content tag (ETag).
Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cyclegan_core.data.images import IMAGE_EXTENSIONS
from pipelines.batch.stores import StoredObject

MANIFEST = "_manifest.json"
LEDGER_FOLDER = "_ledger"
QUARANTINE_FOLDER = "_quarantine"
RESERVED = (MANIFEST, LEDGER_FOLDER, QUARANTINE_FOLDER)

Status = Literal["translated", "quarantined"]


class ModelIdentity(BaseModel):
    """The concrete model a run uses: a registered version (``models:/name/3``), or a local folder or file
    (an official ``.pth``) whose version is a hash of its content (``sha256``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    uri: str = Field(description="what was asked for (models:/name@champion, a path)")
    resolved_uri: str = Field(description="the concrete version (models:/name/3, the path)")
    run_id: str = ""
    sha256: str = Field("", description="a local model's content: a file's sha256, a folder's over its files")

    @property
    def label(self) -> str:
        """The folder (and flow run name) part: ``v3``, or ``sha-<12 hex>`` for a local model."""
        return f"v{self.version}" if self.version.isdigit() else self.version


class InputRecord(BaseModel):
    """What happened to one input (by its path relative to the input location)."""

    source: str
    etag: str
    size: int
    status: Status
    output: str | None = Field(None, description="output path relative to the run root (translated)")
    reason: str | None = Field(None, description="why it was quarantined")
    finished_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


class WorkItem(BaseModel):
    """One input to translate now; ``previous``: its status in the state when it changed since."""

    source: str
    etag: str
    size: int
    output: str
    previous: str = ""


class BatchManifest(BaseModel):
    """``_manifest.json``: the model, the direction and every current input's record."""

    model: ModelIdentity
    direction: str
    input_uri: str
    output_root: str
    updated_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    records: dict[str, InputRecord] = Field(default_factory=dict)


class Ledger(BaseModel):
    """One finished batch's records (``_ledger/<batch id>.json``)."""

    records: list[InputRecord]


class Plan(BaseModel):
    work: list[WorkItem]
    unchanged: list[InputRecord]
    removed: list[str] = Field(default_factory=list, description="inputs of the state that no longer exist")


def run_root(model: ModelIdentity, direction: str) -> str:
    """The run's folder below the output location."""
    return f"{model.name}/{model.label}/{direction}"


def is_image_input(rel: str) -> bool:
    """An image by its suffix, with no hidden part in its path (``.x``, owned temporaries)."""
    path = PurePosixPath(rel)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in path.parts)


def output_names(sources: Iterable[str]) -> dict[str, str]:
    """Each input's output path: its path with ``.png`` for its suffix; where inputs of one folder share
    a stem, the PNG keeps the short name and the others keep their suffix (``photo.jpg.png``), as
    ``cyclegan translate`` names a folder's outputs."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for source in sorted(sources, key=lambda s: (PurePosixPath(s).suffix.lower() != ".png", s)):
        path = PurePosixPath(source)
        name = str(path.with_suffix(".png"))
        if name in taken:
            name = f"{source}.png"
        taken.add(name)
        names[source] = name
    return names


def quarantine_path(source: str) -> str:
    return f"{QUARANTINE_FOLDER}/{source}.json"


def ledger_path(batch_id: str) -> str:
    return f"{LEDGER_FOLDER}/{batch_id}.json"


def current_state(manifest: BatchManifest | None, ledgers: Iterable[Ledger]) -> dict[str, InputRecord]:
    """The newest record of every input: the manifest's, overridden by later ledger records."""
    state = dict(manifest.records) if manifest else {}
    for record in sorted((r for ledger in ledgers for r in ledger.records), key=lambda r: r.finished_at):
        state[record.source] = record
    return state


def plan_work(inputs: Iterable[StoredObject], state: dict[str, InputRecord]) -> Plan:
    """Inputs that are new or whose content changed since their record become work; the others are
    unchanged (a quarantined input with the same content stays quarantined)."""
    images = [obj for obj in inputs if is_image_input(obj.rel)]
    names = output_names(obj.rel for obj in images)
    work, unchanged = [], []
    for obj in images:
        record = state.get(obj.rel)
        if record is not None and record.etag == obj.etag:
            unchanged.append(record)
        else:
            work.append(WorkItem(source=obj.rel, etag=obj.etag, size=obj.size, output=names[obj.rel],
                                 previous=record.status if record else ""))
    present = {obj.rel for obj in images}
    return Plan(work=work, unchanged=unchanged, removed=sorted(set(state) - present))


def parse_json(model: type[BaseModel], data: bytes, where: str) -> BaseModel:
    """A manifest or ledger from its bytes; ValueError naming ``where`` when it does not parse."""
    try:
        return model.model_validate(json.loads(data))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} is not a valid {model.__name__}: {exc}") from exc
