"""Feasibility: infeasible thresholds end quickly with a threshold that works; impossible ones fail first."""

from __future__ import annotations

import time

import pytest

from synthface.errors import InfeasibleThresholdError
from synthface.identity import sample_identities
from tests.helpers.vectors import anisotropic_reference, brute_max_cos


def test_infeasible_threshold_ends_quickly_with_counts_and_a_feasible_threshold():
    ref = anisotropic_reference()
    start = time.perf_counter()
    with pytest.raises(InfeasibleThresholdError) as info:
        sample_identities(3000, max_cos=0.05, prior="gaussian", reference=ref, seed=0)
    assert time.perf_counter() - start < 60
    err = info.value
    assert 0 < err.reached < 3000
    assert f"Reached only {err.reached} of 3000" in str(err)
    assert 0.05 < err.feasible_max_cos <= 1.0
    assert f"about {err.feasible_max_cos}" in str(err)
    # The threshold it suggests is indeed met by the prior.
    bank = sample_identities(3000, max_cos=err.feasible_max_cos, prior="gaussian", reference=ref, seed=0)
    assert brute_max_cos(bank.vectors) <= err.feasible_max_cos


def test_geometrically_impossible_thresholds_fail_before_sampling():
    with pytest.raises(InfeasibleThresholdError, match="mean pairwise"):
        sample_identities(100, max_cos=-0.5, dim=512)
    with pytest.raises(InfeasibleThresholdError, match="At most 9 vectors"):
        sample_identities(10, max_cos=-0.01, dim=8)
    spread = sample_identities(3, max_cos=-0.2, dim=3, seed=0)
    assert brute_max_cos(spread.vectors) <= -0.2
