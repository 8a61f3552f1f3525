"""OpenVINO and NNCF imported with their usage telemetry off.

openvino-telemetry, which OpenVINO's model converter and NNCF call, sends usage data to its vendor
unless a consent file in the user's home says no (a process without that file counts as consenting).
``telemetry_off`` declines in this process before either library is used: nothing is sent and no file is
written. Every import of OpenVINO or NNCF in this project goes through ``import_openvino`` /
``import_nncf``.
"""

from __future__ import annotations

import logging
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
