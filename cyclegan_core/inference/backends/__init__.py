"""Inference backends: one loaded model behind one interface, whichever engine runs it.

``load_translator(model, backend=, precision=, device=, memory_budget=, cache_dir=)`` returns a
``TranslatorLike``: the torch ``Translator`` or an ``OpenVinoTranslator``, the pair asked for or the one
``auto`` measured fastest on this machine within 40 dB of fp32. ``training_precision`` is the same rule
for training's ``precision: auto`` on a CPU. Modules: ``interface`` (the protocol, the choices),
``host`` (what a measurement belongs to), ``probe`` (the measurements), ``decision`` (choosing, the
decision file), ``libraries`` (OpenVINO/NNCF imports, telemetry off), ``model_cache`` (converted models
on disk), ``openvino_runtime`` (the OpenVINO translator and its tiles), ``quantize`` (int8), ``loading``.
Names imported on first use (``cyclegan_core._lazy``): importing ``interface`` imports no torch.
"""

from typing import TYPE_CHECKING

from cyclegan_core._lazy import lazy_attributes

if TYPE_CHECKING:
    from cyclegan_core.inference.backends.interface import (
        BACKENDS,
        PRECISIONS,
        QUALITY_BOUND_DB,
        TranslatorLike,
        check_choice,
    )
    from cyclegan_core.inference.backends.loading import (
        default_cache_dir,
        load_translator,
        training_precision,
        with_backend,
    )

__all__ = ["BACKENDS", "PRECISIONS", "QUALITY_BOUND_DB", "TranslatorLike", "check_choice", "default_cache_dir",
           "load_translator", "training_precision", "with_backend"]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "interface": ["BACKENDS", "PRECISIONS", "QUALITY_BOUND_DB", "TranslatorLike", "check_choice"],
    "loading": ["default_cache_dir", "load_translator", "training_precision", "with_backend"],
})
