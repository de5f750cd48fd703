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


@pytest.fixture(scope="session")
def smoke_run_folder(tmp_path_factory):
    """One finished run of the shipped smoke recipe (random weights: its images hold no face), made
    once per session in-process; tests read it and write their outputs elsewhere."""
    import torch

    from synthface.cli import cli

    out = tmp_path_factory.mktemp("smoke-session") / "run"
    before = torch.get_num_threads()
    try:
        assert cli(["run", "smoke", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)  # the tiny model runs on one thread
    return out
