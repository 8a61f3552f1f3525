"""Collective helpers over ``torch.distributed`` that also work in a single process (no group).

Each is a no-op reduction when no process group is initialised, so the same code runs under Ray
Train / torchrun and in a plain process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if in_process_group():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Mean over all ranks of per-rank sums ``values`` of ``count`` steps each."""
    keys = sorted(values)
    if not keys:
        return {}
    sums = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    total = count
    if in_process_group():
        dist.all_reduce(sums)
        total *= dist.get_world_size()
    return {k: float(v) / max(total, 1) for k, v in zip(keys, sums.tolist(), strict=True)}


def all_gather_float(value: float, device: torch.device) -> list[float]:
    """``value`` of every rank, in rank order."""
    if not in_process_group():
        return [value]
    local = torch.tensor([value], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]


def all_gather_object(value: object) -> list[object]:
    """``value`` (any picklable object) of every rank, in rank order."""
    if not in_process_group():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def parameter_checksum(module: nn.Module) -> float:
    """Sum of |w| over all parameters in float64: equal on every rank iff DDP kept them in sync."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum().item() for p in module.parameters()))
