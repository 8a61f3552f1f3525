"""Lazy package attributes (PEP 562): a package's public names, imported from their modules on first use.

Importing ``cyclegan_core.config`` or ``cyclegan_core.inference.backends.interface`` runs every package
``__init__`` above it; with lazy names those stay free of torch and OpenVINO, which the serving front and
Ray workers would otherwise pay for at import time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def lazy_attributes(
    package: str, homes: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names live in the modules of ``homes``
    (module path relative to the package -> its names): ``{"inference.translator": ["Translator"]}``."""
    home_of = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{home_of[name]}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups find it without __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *home_of})

    return __getattr__, __dir__
