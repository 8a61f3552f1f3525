"""What a rollout run does, from three facts: the version it was asked for (None: reconcile), the
version the alias points at now, and the version last rolled out (recorded). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Decision:
    action: Literal["rollout", "skip"]
    version: str | None  # the version rolled out, or the one the skip is about
    reason: str


def decide(*, model: str, alias: str, requested: str | None, current: str | None,
           rolled_out: str | None) -> Decision:
    """Roll out the alias's current version unless it is already rolled out. A request for a version
    the alias no longer points at is stale and skipped: the run of the later move (or a reconcile)
    rolls out the newer one, so two quick moves end with the last, in whatever order the runs go."""
    where = f"{model}@{alias}"
    if current is None:
        return Decision("skip", requested, f"{where} is not set: nothing to roll out")
    if requested is not None and requested != current:
        return Decision("skip", requested, f"stale request: {where} asked for v{requested} but points at "
                                           f"v{current} now; the run of that move rolls it out")
    if rolled_out == current:
        return Decision("skip", current, f"{where} v{current} is already rolled out (a duplicate request)")
    last = f"v{rolled_out}" if rolled_out else "none yet"
    return Decision("rollout", current, f"{where} points at v{current}; last rolled out: {last}")
