"""Precision: what "auto" means on each device and CPU, and the memory format that goes with it."""

from __future__ import annotations

import pytest
import torch

from cyclegan_core.precision import channels_last_on, fast_cpu_bf16, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SAPPHIRE_RAPIDS = {"avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
ICE_LAKE = {"avx512_f": True, "avx512_vnni": True, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}
ZEN_4 = {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False}


@pytest.mark.parametrize(("capabilities", "fast"), [(SAPPHIRE_RAPIDS, True), (ICE_LAKE, False), (ZEN_4, False),
                                                    ({}, False)])
def test_only_cpus_with_amx_bf16_count_as_fast_bf16(capabilities: dict[str, bool], fast: bool) -> None:
    assert fast_cpu_bf16(capabilities) is fast


def test_this_hosts_answer_comes_from_torchs_capabilities() -> None:
    assert fast_cpu_bf16() is bool(torch.cpu.get_capabilities().get("amx_bf16"))


@pytest.mark.parametrize(("device", "cpu_bf16", "expected"), [(CUDA, False, "bf16"), (CPU, True, "bf16"),
                                                              (CPU, False, "fp32")])
def test_auto_is_bf16_on_cuda_and_on_fast_bf16_cpus_else_fp32(device: torch.device, cpu_bf16: bool,
                                                              expected: str) -> None:
    assert resolve_precision("auto", device, cpu_bf16=cpu_bf16) == expected


def test_explicit_precisions_are_kept_whatever_the_cpu() -> None:
    assert [resolve_precision(p, CPU, cpu_bf16=True) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


def test_an_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16.*'int8'"):
        resolve_precision("int8", CPU)


def test_channels_last_is_for_bf16_on_cpu_only() -> None:
    assert channels_last_on(CPU, "bf16")
    assert not channels_last_on(CPU, "fp32") and not channels_last_on(CPU, "fp16")
    assert not channels_last_on(CUDA, "bf16")
