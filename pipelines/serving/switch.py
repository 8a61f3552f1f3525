"""Which version the model server should serve and whether to switch to it now. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


def wanted_version(*, rolled_out: str | None, alias_version: str | None) -> str | None:
    """The version last rolled out (``rollout.<alias>.version``), else, before any rollout is
    recorded, the alias's current version; None when neither is set."""
    return rolled_out or alias_version


@dataclass(frozen=True)
class SwitchPlan:
    action: Literal["start", "keep", "wait"]
    version: str | None
    reason: str


def plan_switch(*, serving: str | None, wanted: str | None, failed_at: dict[str, float], now: float,
                retry_after_s: float) -> SwitchPlan:
    """Start ``wanted`` unless it is served already, nothing is wanted, or it failed to start less than
    ``retry_after_s`` ago (a version whose start failed is retried after that, not on every poll)."""
    if wanted is None:
        return SwitchPlan("wait", None, "no rollout recorded and the alias is not set: nothing to serve")
    if wanted == serving:
        return SwitchPlan("keep", wanted, f"v{wanted} is served")
    failed = failed_at.get(wanted)
    if failed is not None and now - failed < retry_after_s:
        keep = f"v{serving} stays served" if serving else "nothing is served"
        return SwitchPlan("wait", wanted, f"v{wanted} failed to start; {keep}, v{wanted} is tried again "
                                          f"{retry_after_s:g} s after its failure")
    return SwitchPlan("start", wanted, f"v{wanted} wanted, v{serving or '-'} served")
