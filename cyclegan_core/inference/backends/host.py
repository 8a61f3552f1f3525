"""Which machine a measurement or a compiled model belongs to: CPU model, its flags, the architecture,
the thread count and the versions of the libraries that compute.

A decision or a cached model is reused only by a process whose ``HostIdentity`` is equal: another CPU
(even one with the same model name but other flags, e.g. a VM that hides AMX), another thread count or
another torch/OpenVINO version measures again.
"""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

CPUINFO = Path("/proc/cpuinfo")


class HostIdentity(BaseModel):
    """What a measurement depends on besides the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: str
    cpu_flags: str  # sha256[:16] of the sorted flags
    machine: str  # instruction set architecture (x86_64, aarch64)
    threads: int
    torch: str
    openvino: str  # "missing" when it does not import


@cache
def _cpu() -> tuple[str, str]:
    """(model name, digest of the flags) from /proc/cpuinfo; the processor string elsewhere."""
    fields: dict[str, str] = {}
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = " ".join(sorted((fields.get("flags") or fields.get("Features") or "").split()))
    return name, hashlib.sha256(flags.encode()).hexdigest()[:16]


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def this_host(*, threads: int | None = None) -> HostIdentity:
    """This process's identity; ``threads`` None: torch's intra-op thread count now."""
    cpu, flags = _cpu()
    return HostIdentity(cpu=cpu, cpu_flags=flags, machine=platform.machine(),
                        threads=torch.get_num_threads() if threads is None else threads,
                        torch=torch.__version__, openvino=package_version("openvino"))


def digest(*parts: object) -> str:
    """sha256[:16] of the parts' reprs: a short, stable key for a file name."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
