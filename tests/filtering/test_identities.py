"""Identity rules: planted collisions, greedy losers, blocked collision search and packing."""

from __future__ import annotations

import numpy as np

from synthface.filtering import (
    FilterConfig,
    collision_losers,
    filter_candidates,
    find_collisions,
    greedy_pack,
    judge_identities,
)
from tests.helpers.filtering import planted_set, unit


def test_planted_collisions_are_found_and_resolved_by_policy():
    labels, emb, ids, rng = planted_set(n=10, k=6)
    # identity 7 renders as identity 2, identity 9 as identity 4: their realised centres collide
    for b, a in ((7, 2), (9, 4)):
        emb[labels == b] = unit(ids[a] + 0.08 * rng.standard_normal((6, ids.shape[1])))
    images = filter_candidates(labels, emb, config=FilterConfig(min_cos=None))
    assert images.kept.all()  # per image, nothing is wrong

    def judge(policy):
        return judge_identities(labels, emb, images.kept, images.reason, collision_cos=0.6, collision_policy=policy)

    flagged = judge("flag")
    assert [(a, b) for a, b, _ in flagged.collisions] == [(2, 7), (4, 9)]
    assert all(c > 0.9 for _, _, c in flagged.collisions)
    assert flagged.kept.all() and flagged.collided.tolist() == [7, 9]
    dropped = judge("drop")
    assert set(dropped.reason[np.isin(labels, [7, 9])]) == {"collision"}
    assert dropped.kept[~np.isin(labels, [7, 9])].all()
    resample = judge("resample")  # the losers are listed; their images are the caller's to replace
    assert resample.collided.tolist() == [7, 9] and resample.kept.all()


def test_collision_losers_follow_greedy_order():
    # 0-1, 1-2 collide: greedy keeps 0, drops 1, then keeps 2 (its only earlier clash, 1, is gone)
    assert collision_losers([(0, 1, 0.9), (1, 2, 0.9)], 3).tolist() == [False, True, False]
    assert collision_losers([(0, 2, 0.9), (1, 2, 0.9)], 3).tolist() == [False, False, True]


def test_find_collisions_and_greedy_pack_match_brute_force():
    rng = np.random.default_rng(1)
    # anisotropic: a shared component makes many pairs exceed 0.3
    x = unit(rng.standard_normal((300, 24)) + 0.8 * rng.standard_normal(24))
    x[17] = np.nan  # an identity with no kept image
    g = x @ x.T
    want = sorted((a, b, g[a, b]) for a in range(300) for b in range(a + 1, 300) if g[a, b] > 0.5)
    got = find_collisions(x, 0.5, block=37)
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want] and len(want) > 50
    np.testing.assert_allclose([c for *_, c in got], [c for *_, c in want], atol=1e-5)
    other = unit(rng.standard_normal((40, 24)) + 0.8 * rng.standard_normal(24))
    cross = find_collisions(x, 0.5, other=other, block=16)
    h = x @ other.T
    assert [(a, b) for a, b, _ in cross] == [(a, b) for a in range(300) for b in range(40) if h[a, b] > 0.5]

    packed = greedy_pack(x, (0.3, 0.5), block=23)
    for t in (0.3, 0.5):
        kept = []
        for i in range(300):
            if i != 17 and all(g[i, j] <= t for j in kept):
                kept.append(i)
        assert np.flatnonzero(packed[t]).tolist() == kept
    assert packed[0.3].sum() < packed[0.5].sum() < 299
