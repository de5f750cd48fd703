"""Perturbation: exact target cosines, per-row seeds, mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InvalidInputError
from synthface.identity import mixture_cosines, perturb, sample_identities


@pytest.mark.parametrize("target", [0.96, 0.9, 0.82, 0.5, 0.0, -0.3])
def test_perturb_hits_exact_cosine(target):
    bank = sample_identities(64, max_cos=0.5, dim=512, seed=0)
    out = perturb(bank.vectors, target, seed=5)
    assert out.shape == bank.vectors.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(out * bank.vectors, axis=1), target, atol=1e-5)


def test_perturb_per_row_seeds_are_independent_of_batch_mates():
    bank = sample_identities(8, max_cos=0.5, dim=64, seed=1)
    seeds = [101, 102, 103, 104, 105, 106, 107, 108]
    together = perturb(bank.vectors, 0.9, seed=seeds)
    alone = perturb(bank.vectors[5:6], 0.9, seed=seeds[5:6])
    np.testing.assert_array_equal(together[5], alone[0])
    # Different seeds give different directions at the same cosine.
    assert float(together[0] @ perturb(bank.vectors[:1], 0.9, seed=[999])[0]) < 0.99


def test_perturb_mixture_follows_shares_and_cosines():
    mixture = {0.96: 0.4, 0.90: 0.4, 0.82: 0.2}
    values = mixture_cosines(mixture, 50, seed=0)
    assert sorted(np.unique(values)) == [0.82, 0.90, 0.96]
    assert (values == 0.96).sum() == 20 and (values == 0.90).sum() == 20 and (values == 0.82).sum() == 10
    centre = sample_identities(1, max_cos=0.5, dim=512).vectors
    out = perturb(np.repeat(centre, 50, axis=0), mixture, seed=0)
    np.testing.assert_allclose(np.sort(out @ centre[0]), np.sort(values), atol=1e-5)
    with pytest.raises(InvalidInputError, match="empty"):
        mixture_cosines({}, 3)
