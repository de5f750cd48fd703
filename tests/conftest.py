"""Fixtures shared by test modules that ask for them (none is autouse)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a whole module, restored after it: the tiny models are all per-op
    overhead, and on a shared 2-core machine OpenMP spinning makes them ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
