"""Fixtures of the identity tests."""

import pytest

from synthface.identity import sample, separation


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 96 (tiles of 32, a ragged last one) and batches of 250: many block boundaries."""
    monkeypatch.setattr(separation, "BLOCK", 96)
    monkeypatch.setattr(separation, "CANDIDATE_BATCH", 250)
    monkeypatch.setattr(sample, "INT8_MIN_COUNT", 0)
