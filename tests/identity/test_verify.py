"""Verification: exact nearest-neighbour cosines across blocks, normalised on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.identity import separation, verify
from synthface.identity._vectors import normalise_rows
from synthface.identity.verify import UnitRows


def test_verify_matches_brute_force_across_blocks(monkeypatch):
    monkeypatch.setattr(separation, "BLOCK", 64)  # force several blocks, including a ragged one
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    check = verify(x, bins=10)
    g = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(g, -2)
    assert check.max_cos == pytest.approx(g.max(), abs=1e-6)
    np.testing.assert_allclose(check.nearest_cos, g.max(1), atol=1e-6)
    assert check.histogram.sum() == 300 and len(check.edges) == 11


def test_verify_normalises_blocks_on_the_fly_to_the_same_bits():
    """verify holds no normalised copy of the bank: its rows are divided by their float64 norms block by
    block, giving `normalise_rows`'s values bit for bit, for slices and gathered rows, tiny and huge."""
    x = (np.random.default_rng(0).standard_normal((3000, 64)) * np.logspace(-20, 20, 3000)[:, None]).astype(np.float32)
    rows = UnitRows(x, torch.device("cpu"))
    want = normalise_rows(x)
    assert np.array_equal(rows[0:3000].numpy(), want)
    assert np.array_equal(rows[torch.tensor([5, 2999, 17])].numpy(), want[[5, 2999, 17]])
    assert rows.raw.data_ptr() == torch.from_numpy(x).data_ptr()  # the array itself, not a copy
    assert not rows.unit
    buffer = torch.empty((1000, 64))
    assert np.array_equal(rows.block_into(2500, buffer).numpy(), want[2500:])  # the short last block
    # Rows normalising leaves unchanged are served as they are, with the same bits.
    again = UnitRows(want, torch.device("cpu"))
    assert again.unit and np.array_equal(again.block_into(0, buffer).numpy(), normalise_rows(want)[:1000])
