"""Precision: what "auto" means on each device (the measured CPU choice passed in), and its memory format."""

from __future__ import annotations

import pytest
import torch

from cyclegan_core.precision import channels_last_on, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("device", "cpu_auto", "expected"), [(CUDA, "fp32", "bf16"), (CPU, "bf16", "bf16"),
                                                              (CPU, "fp32", "fp32")])
def test_auto_is_bf16_on_cuda_and_the_measured_choice_on_cpu(device: torch.device, cpu_auto: str,
                                                             expected: str) -> None:
    assert resolve_precision("auto", device, cpu_auto=cpu_auto) == expected  # type: ignore[arg-type]


def test_unmeasured_auto_on_cpu_is_fp32_the_official_computation() -> None:
    assert resolve_precision("auto", CPU) == "fp32"


def test_explicit_precisions_are_kept_whatever_was_measured() -> None:
    assert [resolve_precision(p, CPU, cpu_auto="bf16") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


def test_an_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16.*'int8'"):
        resolve_precision("int8", CPU)


def test_channels_last_is_for_bf16_on_cpu_only() -> None:
    assert channels_last_on(CPU, "bf16")
    assert not channels_last_on(CPU, "fp32") and not channels_last_on(CPU, "fp16")
    assert not channels_last_on(CUDA, "bf16")
