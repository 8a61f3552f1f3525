"""The public API of cyclegan_core: every exported name resolves, and light modules stay light."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

PACKAGES = (
    "cyclegan_core",
    "cyclegan_core.data",
    "cyclegan_core.evaluation",
    "cyclegan_core.inference",
    "cyclegan_core.inference.backends",
    "cyclegan_core.networks",
    "cyclegan_core.training",
)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves_and_is_listed(package: str) -> None:
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__), "a name listed twice"
    for name in module.__all__:
        value = getattr(module, name)
        assert not isinstance(value, ModuleType), f"{package}.{name} is a module, not the exported object"
        assert name in dir(module)


def test_top_level_names_are_the_objects_of_their_modules() -> None:
    import cyclegan_core
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.training.fit import fit
    from cyclegan_core.training.model import CycleGAN

    assert cyclegan_core.Translator is Translator
    assert cyclegan_core.fit is fit
    assert cyclegan_core.CycleGAN is CycleGAN


def test_an_unknown_name_is_an_attribute_error() -> None:
    import cyclegan_core

    with pytest.raises(AttributeError, match="has no attribute 'Translater'"):
        _ = cyclegan_core.Translater


@pytest.mark.parametrize(
    "module", ["cyclegan_core", "cyclegan_core.config", "cyclegan_core.inference.backends.interface"]
)
def test_light_modules_import_neither_torch_nor_openvino(module: str) -> None:
    """The serving front and Ray workers import these; the package __init__s above them are lazy."""
    code = f"import sys, {module}; print(sorted({{'torch', 'openvino'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", f"importing {module} imported {out.stdout.strip()}"
