"""The promotion gate (pure): margin, direction, missing values and the manual switch."""

from __future__ import annotations

import math

from pipelines.config import RegistrySettings
from pipelines.records import EvalReport
from pipelines.registry.gate import gate, gate_decision

REPORT = EvalReport(metrics={"psnr_AtoB": 21.0}, primary_metric="psnr_AtoB", primary_value=21.0)


def test_gate_compares_with_margin_and_direction() -> None:
    higher = RegistrySettings(margin=0.5)
    lower = RegistrySettings(higher_is_better=False)
    assert gate(21.0, None, higher, metric="psnr")[0]
    assert gate(21.0, 20.0, higher, metric="psnr")[0]
    promoted, reason = gate(20.4, 20.0, higher, metric="psnr")
    assert not promoted and "champion stays" in reason
    assert gate(30.0, 40.0, lower, metric="fid")[0] and not gate(41.0, 40.0, lower, metric="fid")[0]
    assert not gate(math.nan, 1.0, higher, metric="psnr")[0]
    assert gate(1.0, math.inf, higher, metric="psnr") == (True, "champion psnr=inf is not finite; challenger 1 wins")


def test_decision_for_a_first_version_a_rerun_and_a_comparison() -> None:
    settings = RegistrySettings()
    first = gate_decision(name="m", number="1", champion=None, champion_value=None, settings=settings, report=REPORT)
    assert first[0] and "no champion yet" in first[1]
    again = gate_decision(name="m", number="3", champion="3", champion_value=None, settings=settings, report=REPORT)
    assert again == (True, "version 3 is already champion")
    worse = gate_decision(name="m", number="4", champion="3", champion_value=25.0, settings=settings, report=REPORT)
    assert not worse[0] and "champion stays" in worse[1]


def test_decision_keeps_the_champion_when_it_cannot_compare_or_must_not() -> None:
    manual = RegistrySettings(auto_promote=False)
    off = gate_decision(name="m", number="2", champion="1", champion_value=1.0, settings=manual, report=REPORT)
    assert off == (False, "registry.auto_promote is off; promote by hand with `cyclegan promote m 2`")
    unknown = gate_decision(name="m", number="2", champion="1", champion_value=None, settings=RegistrySettings(),
                            report=REPORT)
    assert not unknown[0] and "champion version 1 has no 'psnr_AtoB'" in unknown[1]
    fid = RegistrySettings(primary_metric="fid_AtoB", higher_is_better=False)
    missing = gate_decision(name="m", number="2", champion=None, champion_value=None, settings=fid, report=REPORT)
    assert missing == (False, "eval report has no 'fid_AtoB' (registry.primary_metric); available: ['psnr_AtoB']")
