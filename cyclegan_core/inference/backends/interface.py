"""What every translation backend offers (``TranslatorLike``) and which backend/precision pairs exist.

``torch`` runs ``Translator`` (fp32 is the official computation; bf16/fp16 autocast), ``openvino`` runs
the converted generators on the CPU (fp32, bf16, int8 through NNCF), ``auto`` picks by measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
# what each concrete backend computes in
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {"torch": ("fp32", "bf16", "fp16"),
                                                  "openvino": ("fp32", "bf16", "int8")}
QUALITY_BOUND_DB = 40.0  # auto keeps a path only when its output is within this PSNR of fp32's


@runtime_checkable
class TranslatorLike(Protocol):
    """A loaded model that translates PIL images; precision is bound at load time.

    ``copy.copy`` gives an independent ``memory_budget`` (the pyfunc sets a per-request budget on a copy).
    """

    directions: tuple[str, ...]
    memory_budget: int | None

    def multiple(self, direction: str = "AtoB") -> int: ...

    def input_channels(self, direction: str = "AtoB") -> int: ...

    def __call__(self, images: Sequence[Image.Image], *, direction: str = "AtoB",
                 batch_size: int = 8) -> list[Image.Image]: ...

    def describe(self) -> str: ...


def check_choice(backend: str, precision: str) -> None:
    """Refuse an unknown backend or precision, or a pair no backend computes, naming the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto" or backend == "auto":
        return  # auto picks a backend that computes the precision (fp16: torch, int8: openvino)
    if precision not in BACKEND_PRECISIONS[backend]:
        able = [name for name, precisions in BACKEND_PRECISIONS.items() if precision in precisions]
        raise ValueError(f"backend {backend} computes {', '.join(BACKEND_PRECISIONS[backend])}, not {precision}; "
                         f"{precision} needs backend {' or '.join(able)}")


def check_uncalibrated_choice(backend: str, precision: str, *, lacking: str) -> None:
    """``check_choice`` at an entry that has no calibration images (a server, MLflow's loading, the batch
    job's actors): int8 is refused there with why; ``lacking`` finishes "images of the model's input
    domain, which ..."."""
    check_choice(backend, precision)
    if precision == "int8":
        raise ValueError(f"precision int8 calibrates on images of the model's input domain, which {lacking}: use "
                         "auto, fp32 or bf16 (int8: `cyclegan translate` on local files)")
