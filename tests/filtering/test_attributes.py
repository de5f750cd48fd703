"""The attribute-drift rule (issue 26): an image whose apparent gender is not its identity's majority, or
whose apparent age is far from its identity's median, is dropped as attribute_drift, after the similarity
and quality checks and before the near-duplicate and best-n selection."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InvalidInputError
from synthface.filtering import FilterConfig, filter_candidates
from synthface.filtering.attributes import identity_attributes, inconsistent_identities


def _set():
    labels = np.repeat([0, 1], 5)
    emb = np.eye(2, 8)[labels] + 0.01 * np.random.default_rng(0).standard_normal((10, 8))
    age = np.array([30, 31, 29, 55, 30, 60, 62, 61, 59, 60], dtype=float)
    gender = np.array(["female"] * 5 + ["male", "male", "female", "male", "male"], dtype=object)
    return labels, emb, age, gender


def test_drifting_images_are_dropped_before_the_best_n_selection():
    labels, emb, age, gender = _set()
    res = filter_candidates(labels, emb, age=age, gender=gender,
                            config=FilterConfig(duplicate_cos=None, max_age_gap=12.0, keep_per_identity=4))
    assert list(np.flatnonzero(res.reason == "attribute_drift")) == [3, 7]  # 25 years off; the one woman
    assert res.kept_per_identity.tolist() == [4, 4]  # the best four of those left, not of all five
    off = filter_candidates(labels, emb, config=FilterConfig(duplicate_cos=None))
    assert not (off.reason == "attribute_drift").any()
    with pytest.raises(InvalidInputError, match="age= and gender="):
        filter_candidates(labels, emb, config=FilterConfig(max_age_gap=12.0))


def test_identity_summaries_and_inconsistency():
    labels, _, age, gender = _set()
    summary = identity_attributes(labels, age, gender)
    assert summary.gender.tolist() == ["female", "male"] and summary.median_age.tolist() == [30.0, 60.0]
    assert summary.agreement.tolist() == [1.0, 0.8]
    reason = np.array(["", "", "", "attribute_drift", "", "", "", "attribute_drift", "attribute_drift", "no_face"])
    assert inconsistent_identities(labels, reason, 0.25).tolist() == [1]  # 2 of its 4 judged images drifted


def test_summaries_of_interleaved_identities_equal_a_per_identity_computation():
    """Rows of several identities in any order (as resampling rounds append them) and unmeasured rows:
    each identity's median, IQR, majority and agreement equal numpy over that identity's rows alone."""
    rng = np.random.default_rng(5)
    ident = rng.permutation(np.repeat([3, 7, 11, 40, 41], [9, 1, 6, 12, 4]))
    age = rng.uniform(5, 90, ident.size)
    gender = np.where(rng.random(ident.size) < 0.4, "female", "male").astype(object)
    gender[::7] = ""  # no face: not measured
    s = identity_attributes(ident, age, gender)
    for k, label in enumerate(s.labels):
        mine = (ident == label) & (gender != "")
        a, g = age[mine], gender[mine]
        assert s.images[k] == mine.sum() and s.median_age[k] == pytest.approx(np.median(a))
        assert s.age_spread[k] == pytest.approx(np.percentile(a, 75) - np.percentile(a, 25))
        female, male = int((g == "female").sum()), int((g == "male").sum())
        if female != male:
            assert s.gender[k] == ("female" if female > male else "male")
        assert s.agreement[k] == pytest.approx(max(female, male) / mine.sum())
