"""What ``auto`` chose on this machine, and the small file that remembers it.

A ``Decision`` holds the timings of every candidate path (backend + precision) on a probe of one
generator architecture, with each output's PSNR against torch fp32's. ``choose`` keeps the fastest
candidate within ``QUALITY_BOUND_DB`` of fp32 that the caller allows (a backend or precision it fixed),
unless the exact one (torch fp32) is within ``MARGIN`` of it.
``decide`` reads the decision from ``<cache_dir>/decisions/<kind>-<key>.json`` when the file was made on
this very host (``HostIdentity``: CPU model and flags, architecture, thread count, library versions) for
this architecture, else measures (one process at a time: the others wait on its lock, then read) and
writes it atomically. A file that does not parse is measured again; one from another host is never
reused. Figures and the probe: benchmarks/README.md "CPU inference".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cyclegan_core.atomic import exclusive, write_json_atomic
from cyclegan_core.inference.backends.host import HostIdentity, digest
from cyclegan_core.inference.backends.interface import QUALITY_BOUND_DB

logger = logging.getLogger(__name__)

FORMAT = "cyclegan-auto-decision"
FORMAT_VERSION = 2  # 2: a translate decision's PSNR is the worst of several probe scenes
DECISIONS_FOLDER = "decisions"
Kind = Literal["translate", "train"]
MARGIN = 1.1  # another path must beat the exact one by more than this factor to replace it


class Measurement(BaseModel):
    """One candidate path timed on the probe; ``psnr_db`` None: identical to the reference (fp32)."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    precision: str
    ms: float
    psnr_db: float | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    def within(self, bound_db: float) -> bool:
        return self.psnr_db is None or self.psnr_db >= bound_db


class Decision(BaseModel):
    """The measurements of one (host, kind, architecture)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["cyclegan-auto-decision"] = FORMAT
    format_version: int = FORMAT_VERSION
    kind: Kind
    host: HostIdentity
    architecture: dict[str, str | int | float | bool]
    probe: str
    measured_at: str
    measurements: list[Measurement]


class NoCandidate(ValueError):
    """No measured path satisfies the constraints (e.g. OpenVINO was asked for and did not run)."""


def choose(measurements: Sequence[Measurement], *, backend: str = "auto", precision: str = "auto",
           bound_db: float = QUALITY_BOUND_DB, margin: float = MARGIN) -> Measurement:
    """The fastest measurement within ``bound_db`` of fp32 whose backend and precision match the ones
    fixed (``auto``: any); ``NoCandidate`` when none does. The exact computation (the reference, torch
    fp32) is kept unless another path is more than ``margin`` times faster: a lead inside the probe's
    noise is not worth leaving the official math for."""
    allowed = [m for m in measurements if backend in ("auto", m.backend) and precision in ("auto", m.precision)
               and m.within(bound_db)]
    if not allowed:
        raise NoCandidate(f"no measured path is backend {backend}, precision {precision} within {bound_db:g} dB "
                          f"of fp32 (measured: {summary(measurements)})")
    fastest = min(allowed, key=lambda m: m.ms)
    exact = next((m for m in allowed if m.psnr_db is None), None)
    return exact if exact is not None and exact.ms <= margin * fastest.ms else fastest


def summary(measurements: Sequence[Measurement]) -> str:
    """``openvino bf16 240 ms 46.2 dB, torch fp32 610 ms, ...`` fastest first."""
    return ", ".join(f"{m.label} {m.ms:.0f} ms" + (f" {m.psnr_db:.1f} dB" if m.psnr_db is not None else "")
                     for m in sorted(measurements, key=lambda m: m.ms))


def explain(choice: Measurement, decision: Decision, source: str, *, backend: str = "auto",
            precision: str = "auto", bound_db: float = QUALITY_BOUND_DB) -> str:
    """Why ``choice``: one line (the log line and ``describe()``'s reason)."""
    fixed = [f"{name} {value}" for name, value in (("backend", backend), ("precision", precision)) if value != "auto"]
    return (f"auto: fastest{' ' + ' and '.join(fixed) if fixed else ''} path within {bound_db:g} dB of fp32 "
            f"(torch fp32 unless beaten by over {MARGIN:g}x) on {decision.host.cpu}, {decision.host.threads} "
            f"thread(s), {decision.probe}: {summary(decision.measurements)}; {source}")


def decision_path(cache_dir: Path, kind: Kind, host: HostIdentity, architecture: dict) -> Path:
    key = digest(FORMAT_VERSION, kind, host.model_dump(), sorted(architecture.items()))
    return cache_dir / DECISIONS_FOLDER / f"{kind}-{key}.json"


def read_decision(path: Path, *, kind: Kind, host: HostIdentity, architecture: dict) -> Decision | None:
    """The decision in ``path`` when it is intact and was made here for this architecture; else None
    (with a line saying why it is not trusted)."""
    if not path.is_file():
        return None
    try:
        decision = Decision.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        reason = str(exc).splitlines()[0]
        logger.warning("auto decision file %s is unreadable or corrupt (%s): measuring again", path, reason)
        return None
    if decision.host != host or decision.kind != kind or decision.architecture != architecture:
        logger.warning("auto decision file %s was made for another host or model (%s, %d threads, torch %s, "
                       "openvino %s): measuring again on this one", path, decision.host.cpu, decision.host.threads,
                       decision.host.torch, decision.host.openvino)
        return None
    return decision


def decide(cache_dir: Path | None, *, kind: Kind, host: HostIdentity, architecture: dict, probe: str,
           measure: Callable[[], list[Measurement]]) -> tuple[Decision, str]:
    """The decision for (``kind``, ``host``, ``architecture``): read from ``cache_dir`` when trusted, else
    ``measure()``d and written there (None, or a folder that cannot be written: measured, not kept).
    Returns it with where it came from (for the log line)."""
    def measured() -> Decision:
        return Decision(kind=kind, host=host, architecture=architecture, probe=probe,
                        measured_at=datetime.now(UTC).isoformat(timespec="seconds"), measurements=measure())

    if cache_dir is None:
        return measured(), "measured now (no cache folder: not kept)"
    path = decision_path(cache_dir, kind, host, architecture)
    with ExitStack() as stack:
        try:  # one process measures, the others (Ray actors, DDP workers on this node) wait here, then read
            stack.enter_context(exclusive(path.with_name(f".{path.name}.lock")))
        except OSError as exc:
            logger.warning("cannot write the auto decision under %s (%s): measuring without keeping it",
                           cache_dir, exc)
            return measured(), "measured now (cache folder not writable: not kept)"
        cached = read_decision(path, kind=kind, host=host, architecture=architecture)
        if cached is not None:
            return cached, f"measured {cached.measured_at}, read from {path}"
        decision = measured()
        try:
            write_json_atomic(path, decision.model_dump(mode="json"), indent=1)
        except OSError as exc:
            logger.warning("cannot write the auto decision %s (%s): it is measured again next time", path, exc)
            return decision, "measured now (not kept)"
        return decision, f"measured now, kept in {path}"
