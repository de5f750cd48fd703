"""Replacements: fresh vectors keep the bank's separation, come from their own stream, and give up clearly."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InfeasibleThresholdError
from synthface.identity import draw_replacements, isotropic_prior, sample_identities
from tests.helpers.vectors import brute_max_cos


def test_replacements_keep_the_separation_and_are_seed_and_round_determined():
    bank = sample_identities(200, max_cos=0.5, dim=32, seed=3)
    rows = np.array([7, 3, 150])
    exclude = np.random.default_rng(2).standard_normal((40, 32))
    new = draw_replacements(bank.vectors, rows, prior=bank.prior, max_cos=0.5, seed=3, round_=1,
                            exclude=exclude, exclude_max_cos=0.45)
    assert new.shape == (3, 32) and new.dtype == np.float32
    replaced = bank.vectors.copy()
    replaced[rows] = new
    assert brute_max_cos(replaced) <= 0.5
    unit = exclude / np.linalg.norm(exclude, axis=1, keepdims=True)
    assert float((new @ unit.T).max()) <= 0.45
    again = draw_replacements(bank.vectors, rows, prior=bank.prior, max_cos=0.5, seed=3, round_=1,
                              exclude=exclude, exclude_max_cos=0.45)
    assert np.array_equal(new, again)
    other_round = draw_replacements(bank.vectors, rows, prior=bank.prior, max_cos=0.5, seed=3, round_=2,
                                    exclude=exclude, exclude_max_cos=0.45)
    assert not np.array_equal(new, other_round)


def test_a_full_bank_names_the_row_and_the_fixes():
    angles = np.radians([0.0, 120.0, 240.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    # No direction lies 127 degrees or more from both 0 and 240 degrees.
    with pytest.raises(InfeasibleThresholdError, match=r"No replacement for identity 1 .*collision_policy"):
        draw_replacements(vectors, np.array([1]), prior=isotropic_prior(2), max_cos=-0.6, seed=0, round_=1, max_draws=640)
