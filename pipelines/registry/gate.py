"""The promotion gate: whether a newly registered version replaces the champion, and why (pure)."""

from __future__ import annotations

import math

from pipelines.config import RegistrySettings
from pipelines.records import EvalReport

CHAMPION = "champion"
CHALLENGER = "challenger"


def gate(challenger_value: float, champion_value: float | None, settings: RegistrySettings, *,
         metric: str) -> tuple[bool, str]:
    """Compare two metric values. Returns (promote, human-readable reason)."""
    if not math.isfinite(challenger_value):
        return False, f"challenger {metric}={challenger_value} is not a finite number"
    if champion_value is None:
        return True, f"no champion yet; challenger {metric}={challenger_value:.6g} becomes champion"
    if not math.isfinite(champion_value):
        return True, f"champion {metric}={champion_value} is not finite; challenger {challenger_value:.6g} wins"
    gain = challenger_value - champion_value if settings.higher_is_better else champion_value - challenger_value
    better = "higher" if settings.higher_is_better else "lower"
    comparison = (f"challenger {metric}={challenger_value:.6g} vs champion {champion_value:.6g} "
                  f"({better} is better, margin {settings.margin:g})")
    if gain > settings.margin:
        return True, f"{comparison}: challenger wins"
    return False, f"{comparison}: champion stays"


def gate_decision(*, name: str, number: str, champion: str | None, champion_value: float | None,
                  settings: RegistrySettings, report: EvalReport) -> tuple[bool, str]:
    """Whether version ``number`` of model ``name`` becomes champion, and why.

    ``champion`` is the current champion's version (None: there is none) and ``champion_value`` its
    value of ``settings.primary_metric`` (None: unknown).
    """
    metric = settings.primary_metric
    value = report.metrics.get(metric, report.primary_value if report.primary_metric == metric else None)
    manual = f"promote by hand with `cyclegan promote {name} {number}`"
    if champion == number:
        return True, f"version {number} is already {CHAMPION}"
    if value is None:
        return False, f"eval report has no {metric!r} (registry.primary_metric); available: {sorted(report.metrics)}"
    if not settings.auto_promote:
        return False, f"registry.auto_promote is off; {manual}"
    if champion is None:
        return gate(float(value), None, settings, metric=metric)
    if champion_value is None:
        return False, f"champion version {champion} has no {metric!r} to compare with; {manual}"
    return gate(float(value), champion_value, settings, metric=metric)
