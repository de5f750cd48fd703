"""Bounded angular perturbation (IDperturb): the bisector bound against brute force, cosines uniform in
[lb, max_cos], exact unit vectors, per-row seeds, exact nearest cosines."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InvalidInputError
from synthface.identity import (
    IdentityBank,
    bank_nearest_cosines,
    bounded_cosines,
    bounded_perturb,
    isotropic_prior,
    lower_bounds,
    nearest_cosines,
    perturb,
    sample_identities,
)
from synthface.identity import bounded as bounded_module


def close_pairs_bank(dim: int = 24, seed: int = 0) -> np.ndarray:
    """Unit vectors with planted close pairs (cosines about 0.99, 0.95, 0.9, 0.8, 0.6) among random ones."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((30, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    pairs = []
    for i, target in enumerate((0.99, 0.95, 0.9, 0.8, 0.6)):
        v = base[i]
        u = rng.standard_normal(dim)
        u -= (u @ v) * v
        u /= np.linalg.norm(u)
        pairs.append(target * v + np.sqrt(1 - target**2) * u)
    vectors = np.concatenate([base, np.stack(pairs)])
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def brute_nearest(vectors: np.ndarray) -> np.ndarray:
    gram = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    np.fill_diagonal(gram, -np.inf)
    return gram.max(axis=1)


def test_nearest_cosines_are_exact_and_do_not_depend_on_chunks_or_rows(monkeypatch):
    vectors = close_pairs_bank()
    nearest = nearest_cosines(vectors)
    assert nearest.dtype == np.float32
    np.testing.assert_allclose(nearest, brute_nearest(vectors), atol=1e-7)
    assert np.array_equal(nearest, brute_nearest(vectors).astype(np.float32))  # the float32 value of the cosine
    rows = [33, 0, 7, 34]
    assert np.array_equal(nearest_cosines(vectors, rows), nearest[rows])
    monkeypatch.setattr(bounded_module, "NEAREST_ROWS", 3)
    monkeypatch.setattr(bounded_module, "NEAREST_COLUMNS", 4)  # ragged chunks, self in many positions
    assert np.array_equal(nearest_cosines(vectors), nearest)
    assert np.array_equal(nearest_cosines(vectors, rows), nearest[rows])
    # Not unit rows: normalised first. One row: no neighbour (NaN). Bad rows: refused.
    np.testing.assert_allclose(nearest_cosines(3.0 * vectors), nearest, atol=1e-7)
    assert np.isnan(nearest_cosines(vectors[:1])).all()
    with pytest.raises(InvalidInputError, match="rows must index"):
        nearest_cosines(vectors, [35])


def test_recorded_nearest_cosines_agree_with_the_exact_ones():
    bank = sample_identities(300, max_cos=0.4, dim=32, seed=2)
    np.testing.assert_allclose(bank_nearest_cosines(bank), nearest_cosines(bank.vectors), atol=1e-6)
    assert bank_nearest_cosines(bank) is bank.nearest_cos
    imported = IdentityBank(bank.vectors, isotropic_prior(32))  # no recorded cosines: computed exactly
    assert np.array_equal(bank_nearest_cosines(imported), nearest_cosines(bank.vectors))


def test_no_variant_crosses_the_bisector_towards_another_identity():
    """Brute force over a bank with close pairs: every variant is closer to its own identity than to
    any other. The same cosines without the bisector bound (floor alone) do cross, so the bank tests it."""
    vectors = close_pairs_bank()
    nearest = nearest_cosines(vectors)
    per = 200
    rows = np.repeat(np.arange(len(vectors)), per)
    seeds = list(range(1000, 1000 + rows.size))
    out, targets = bounded_perturb(vectors[rows], nearest[rows], seeds, floor=0.4, max_cos=1.0)
    cos = out.astype(np.float64) @ vectors.astype(np.float64).T
    own = cos[np.arange(rows.size), rows]
    cos[np.arange(rows.size), rows] = -np.inf
    assert (own > cos.max(axis=1)).all()
    np.testing.assert_allclose(own, targets, atol=1e-6)
    assert (targets >= lower_bounds(nearest[rows], 0.4) - 1e-12).all()

    unbounded = np.random.default_rng(0).uniform(0.4, 1.0, rows.size)  # IDperturb with safe_min_cos off
    loose = perturb(vectors[rows], unbounded, seed=seeds).astype(np.float64) @ vectors.astype(np.float64).T
    own_loose = loose[np.arange(rows.size), rows]
    loose[np.arange(rows.size), rows] = -np.inf
    assert (own_loose < loose.max(axis=1)).sum() > 100


@pytest.mark.parametrize(("nearest", "floor", "max_cos"), [(0.3, 0.4, 1.0), (-0.5, 0.4, 1.0), (0.8, 0.4, 1.0),
                                                           (0.3, 0.2, 0.95), (float("nan"), 0.4, 0.9)])
def test_cosines_are_uniform_in_the_bound_to_max_cos(nearest, floor, max_cos):
    n = 20_000
    lb = max(floor, np.sqrt((1 + nearest) / 2)) if not np.isnan(nearest) else floor
    assert lower_bounds([nearest], floor)[0] == pytest.approx(lb, abs=1e-15)
    c = bounded_cosines(np.full(n, nearest), list(range(n)), floor=floor, max_cos=max_cos)
    width = max_cos - lb
    assert c.min() >= lb and c.max() < max_cos
    assert c.min() - lb < 1e-3 * width and max_cos - c.max() < 1e-3 * width
    sd_of_mean = width / np.sqrt(12 * n)
    assert abs(c.mean() - (lb + max_cos) / 2) < 4 * sd_of_mean
    counts = np.histogram(c, bins=10, range=(lb, max_cos))[0]  # flat: every tenth within 5 sd of n / 10
    assert np.abs(counts - n / 10).max() < 5 * np.sqrt(n / 10)


def test_variants_are_exact_unit_vectors_at_their_cosine_and_each_depends_on_its_own_seed():
    bank = sample_identities(16, max_cos=0.3, dim=512, seed=4)
    rows = np.repeat(np.arange(16), 8)
    seeds = [7 * k + 3 for k in range(rows.size)]
    near = bank.nearest_cos[rows]
    out, c = bounded_perturb(bank.vectors[rows], near, seeds)
    assert out.dtype == np.float32 and out.shape == (rows.size, 512)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(out.astype(np.float64) * bank.vectors[rows], axis=1), c, atol=1e-6)
    for k in (0, 37, rows.size - 1):  # alone, or in another batch: the same bytes
        alone, c_alone = bounded_perturb(bank.vectors[rows[k : k + 1]], near[k : k + 1], seeds[k : k + 1])
        assert np.array_equal(alone[0], out[k]) and c_alone[0] == c[k]
    shuffled = np.random.default_rng(0).permutation(rows.size)
    again, c_again = bounded_perturb(bank.vectors[rows[shuffled]], near[shuffled], [seeds[k] for k in shuffled])
    assert np.array_equal(again, out[shuffled]) and np.array_equal(c_again, c[shuffled])
    # Same identity, other seeds: other cosines and directions.
    assert len(set(c[:8].tolist())) == 8 and float(out[0] @ out[1]) < 0.99


def test_a_bound_above_max_cos_wins_and_bad_settings_are_refused():
    assert np.all(bounded_cosines([0.9, 0.9], [1, 2], floor=0.4, max_cos=0.9) == lower_bounds([0.9], 0.4)[0])
    for floor, max_cos in ((1.0, 1.0), (0.5, 0.5), (0.6, 0.4), (-1.5, 1.0), (0.4, 1.2), (float("nan"), 1.0)):
        with pytest.raises(InvalidInputError, match="floor|max_cos"):
            bounded_cosines([0.1], [1], floor=floor, max_cos=max_cos)
    v = sample_identities(2, max_cos=0.3, dim=8).vectors
    with pytest.raises(InvalidInputError, match="2 vectors"):
        bounded_perturb(v, [0.1], [1, 2])
    with pytest.raises(InvalidInputError, match="seeds"):
        bounded_perturb(v, [0.1, 0.1], [1])
