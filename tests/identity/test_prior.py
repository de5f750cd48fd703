"""Priors: a gaussian fitted to references keeps the guarantee and its support."""

from __future__ import annotations

import numpy as np

from synthface.identity import sample_identities
from tests.helpers.vectors import anisotropic_reference, brute_max_cos


def test_gaussian_prior_guarantee_and_support():
    ref = anisotropic_reference()
    bank = sample_identities(500, max_cos=0.6, prior="gaussian", reference=ref, seed=3)
    assert brute_max_cos(bank.vectors) <= 0.6
    # The samples stay in the prior's support: they lean towards the reference mean direction.
    mean_dir = ref.mean(0) / np.linalg.norm(ref.mean(0))
    iso = sample_identities(500, max_cos=0.6, dim=64, seed=3)
    assert float((bank.vectors @ mean_dir).mean()) > 0.15
    assert abs(float((iso.vectors @ mean_dir).mean())) < 0.05
