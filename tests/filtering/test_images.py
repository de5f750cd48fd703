"""Per-image rules on planted cases: impostors, missing faces, near-duplicates, best n of k."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InvalidInputError
from synthface.filtering import (
    DROP_REASONS,
    FilterConfig,
    filter_candidates,
    keep_first,
    near_duplicates,
    robust_centres,
    surplus,
    unit_rows,
)
from tests.helpers.filtering import planted_set, unit


@pytest.mark.parametrize("use_ids", [True, False], ids=["id_vector", "robust_centre"])
def test_planted_impostors_and_missing_faces_are_dropped(use_ids):
    labels, emb, ids, rng = planted_set()
    impostors = [3, 17, 50]  # rows rendered as someone else: identity 5's face under labels 0, 2, 6
    emb[impostors] = unit(ids[5] + 0.05 * rng.standard_normal((3, ids.shape[1])))
    emb[[9, 40]] = np.nan
    res = filter_candidates(labels, emb, id_vectors=ids if use_ids else None, config=FilterConfig(min_cos=0.5))
    assert res.compared_to == ("id_vector" if use_ids else "centre")
    assert list(res.reason[impostors]) == ["low_similarity"] * 3
    assert list(res.reason[[9, 40]]) == ["no_face"] * 2
    assert np.isnan(res.filter_cos[[9, 40]]).all()
    others = np.setdiff1d(np.arange(labels.size), impostors + [9, 40])
    assert res.kept[others].all() and (res.filter_cos[others] > 0.7).all()
    assert res.counts() == {"kept": others.size, "no_face": 2, "low_similarity": 3, "low_quality": 0,
                            "near_duplicate": 0, "surplus": 0, "collision": 0, "replaced": 0, "too_few": 0,
                            "attribute_drift": 0}
    assert set(res.counts()) - {"kept"} == set(DROP_REASONS)
    np.testing.assert_array_equal(res.kept_per_identity, np.bincount(labels[res.kept], minlength=12))


def test_robust_centre_ignores_a_minority_of_impostors():
    labels, emb, ids, rng = planted_set(n=3, k=10)
    emb[:3] = unit(rng.standard_normal((3, ids.shape[1])))  # 3 of 10 images of identity 0 are strangers
    face, u = unit_rows(emb)
    robust = robust_centres(u, labels, face, 3, trim=0.3)
    plain = unit(u[labels == 0].mean(0))
    genuine_only = unit(u[3:10].mean(0))
    assert float(robust[0] @ ids[0]) > float(plain @ ids[0]) + 0.02
    np.testing.assert_allclose(robust[0], genuine_only, atol=1e-5)  # the strangers are trimmed away


def test_near_duplicates_keep_the_better_ranked_copy():
    labels, emb, ids, rng = planted_set(n=4, k=6)
    emb[8] = unit(emb[7] + 1e-3 * rng.standard_normal(ids.shape[1]))  # a copy of row 7 (same identity 1)
    emb[23] = emb[19]  # exact copy, identity 3
    res = filter_candidates(labels, emb, id_vectors=ids, config=FilterConfig(min_cos=0.5))
    assert res.reason[8] == "near_duplicate" and res.kept[7]
    assert res.reason[23] == "near_duplicate" and res.kept[19]
    assert res.counts()["near_duplicate"] == 2


def test_near_duplicates_match_brute_force_across_batches():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 40, size=300)
    labels = np.repeat(np.arange(sizes.size), sizes)
    base = unit(rng.standard_normal((sizes.size, 16)))
    emb = unit(base[labels] + 0.15 * rng.standard_normal((labels.size, 16)))
    priority = rng.standard_normal(labels.size)
    mask = rng.random(labels.size) > 0.1
    got = near_duplicates(emb, labels, mask, priority, 0.9, batch_elements=20_000)  # many padded batches
    want = np.zeros(labels.size, bool)
    for c in range(sizes.size):
        kept = []
        for r in sorted(np.flatnonzero((labels == c) & mask), key=lambda r: -priority[r]):
            if any(emb[r] @ emb[q] > 0.9 for q in kept):
                want[r] = True
            else:
                kept.append(r)
    assert want.sum() > 20
    np.testing.assert_array_equal(got, want)


def test_best_n_of_k_keeps_the_first_rendered():
    labels, emb, ids, _ = planted_set(n=5, k=8, noise=0.3)
    res = filter_candidates(labels, emb, id_vectors=ids, config=FilterConfig(
        min_cos=None, keep_per_identity=3, duplicate_cos=None))
    assert res.kept_per_identity.tolist() == [3] * 5
    for c in range(5):
        assert np.flatnonzero(res.kept & (labels == c)).tolist() == np.flatnonzero(labels == c)[:3].tolist()
    assert res.counts()["surplus"] == 25
    first = surplus(labels, np.ones(labels.size, bool), -np.arange(labels.size, dtype=float), 3)
    assert not first[[0, 1, 2, 8, 9, 10]].any() and first[[3, 11]].all()
    # with no recogniser: the same selection, and nothing measured
    unjudged = keep_first(labels, 3)
    np.testing.assert_array_equal(unjudged.kept, res.kept)
    assert np.isnan(unjudged.filter_cos).all() and np.isnan(unjudged.pose).all() and unjudged.pose.shape == (40, 3)


def test_bad_inputs_raise_clear_errors():
    labels, emb, ids, _ = planted_set(n=2, k=3)
    with pytest.raises(InvalidInputError, match="shape"):
        filter_candidates(labels, emb[:4])
    with pytest.raises(InvalidInputError, match="integer"):
        filter_candidates(labels.astype(float), emb)
    with pytest.raises(InvalidInputError, match="id_vectors"):
        filter_candidates(labels, emb, id_vectors=ids[:1])
    with pytest.raises(InvalidInputError, match="det_score"):
        filter_candidates(labels, emb, det_score=np.ones(2))
    with pytest.raises(InvalidInputError, match="cosine"):
        FilterConfig(min_cos=2.0)
