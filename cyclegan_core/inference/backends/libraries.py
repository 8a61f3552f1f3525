"""OpenVINO and NNCF imported with their usage telemetry off, and OpenVINO's signal stack kept in check.

openvino-telemetry, which OpenVINO's model converter and NNCF call, sends usage data to its vendor
unless a consent file in the user's home says no (a process without that file counts as consenting).
``telemetry_off`` declines in this process before either library is used: nothing is sent and no file is
written. Every import of OpenVINO or NNCF in this project goes through ``import_openvino`` /
``import_nncf``.

OpenVINO's CPU plugin (2026.4) installs a signal stack (``sigaltstack``, for AMX's large signal frames) on
the thread that compiles a model and, when the compiled model is destroyed, puts back the one it found
and unmaps its own. Destroyed in another order than created (two models compiled, the first dropped
first), the thread is left with an unmapped signal stack, and the next signal with a handler (SIGINT,
SIGALRM, Ray's and Prefect's handlers) kills the process with SIGSEGV. ``signal_stack_kept`` wraps every
compilation here and puts the thread's previous signal stack back at once: each compiled model then
"restores" that same stack, whatever the order (tests/integration/test_openvino.py checks it).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def telemetry_off() -> None:
    """Decline openvino-telemetry's consent check in this process (OpenVINO's converter and NNCF ask it
    before each session), and withdraw the consent of a telemetry object already made."""
    try:
        from openvino_telemetry import Telemetry
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined  # type: ignore[method-assign]
    existing = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    if existing is not None:
        existing.consent = False


def import_openvino() -> Any:
    """The ``openvino`` module, telemetry off (ImportError when it is not installed)."""
    telemetry_off()
    import openvino

    return openvino


def import_nncf() -> Any:
    """The ``nncf`` module, telemetry off (ImportError when it is not installed)."""
    telemetry_off()
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step info lines are not the user's business
    return nncf


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Run the block (an OpenVINO compilation) and give this thread back the signal stack it had before."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _StackT()
    if libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)
