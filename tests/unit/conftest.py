"""Unit tests run on tiny tensors: one intra-op thread avoids synchronisation overhead (and stalls
when the 2-core host is busy)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
