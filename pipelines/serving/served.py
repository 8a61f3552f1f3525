"""Asking a running ``cyclegan serve`` which version it serves (``GET /served-version``), and waiting,
bounded, until it serves a given version: what the rollout flow reports about the servers it names."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.serving.settings import SERVED_VERSION_PATH


@dataclass(frozen=True)
class ServedCheck:
    url: str
    served: bool
    detail: str  # one line: what the server answered last


def served_version(url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + SERVED_VERSION_PATH, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_until_served(url: str, *, model: str, version: str, timeout_s: float, poll_s: float = 1.0,
                      clock: Callable[[], float] = time.monotonic) -> ServedCheck:
    """Poll ``url``'s ``/served-version`` until it serves ``model`` v``version`` or ``timeout_s`` passed."""
    deadline = clock() + timeout_s
    detail = "no answer yet"
    while True:
        try:
            status = served_version(url)
        except (OSError, ValueError) as exc:  # URLError/HTTPError are OSErrors; a non-JSON answer
            detail = f"unreachable ({exc})"
        else:
            if status.get("model") != model:
                return ServedCheck(url, False, f"serves model {status.get('model')!r}, not {model!r}")
            if status.get("version") == version:
                return ServedCheck(url, True, f"serves v{version} since {status.get('since')}")
            failure = status.get("last_failure") or {}
            if failure.get("version") == version:
                return ServedCheck(url, False, f"v{version} failed to load there: {failure.get('reason')}; "
                                               f"still v{status.get('version')}")
            detail = f"still serves v{status.get('version')} ({status.get('state')})"
        if clock() >= deadline:
            return ServedCheck(url, False, f"{detail} after {timeout_s:g} s")
        time.sleep(poll_s)
