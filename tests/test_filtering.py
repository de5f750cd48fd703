"""Filtering rules on planted cases: impostors, collisions, near-duplicates, quality, best n of k."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InvalidInputError
from synthface.filtering import (
    DROP_REASONS,
    FilterConfig,
    collision_losers,
    filter_candidates,
    find_collisions,
    greedy_pack,
    near_duplicates,
    pose_from_landmarks,
    robust_centres,
    sharpness,
    surplus,
    unit_rows,
)

TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_set(n=12, k=8, d=64, noise=0.08, seed=0):
    """n identities x k images around random ID vectors, returned with labels and ID vectors."""
    rng = np.random.default_rng(seed)
    ids = unit(rng.standard_normal((n, d)))
    labels = np.repeat(np.arange(n), k)
    emb = unit(ids[labels] + noise * rng.standard_normal((n * k, d)))
    return labels, emb, ids, rng


@pytest.mark.parametrize("use_ids", [True, False], ids=["id_vector", "robust_centre"])
def test_planted_impostors_and_missing_faces_are_dropped(use_ids):
    labels, emb, ids, rng = planted_set()
    impostors = [3, 17, 50]  # rows rendered as someone else: identity 5's face under labels 0, 2, 6
    emb[impostors] = unit(ids[5] + 0.05 * rng.standard_normal((3, ids.shape[1])))
    emb[[9, 40]] = np.nan
    res = filter_candidates(labels, emb, id_vectors=ids if use_ids else None, config=FilterConfig(collision_cos=None))
    assert res.compared_to == ("id_vector" if use_ids else "centre")
    assert list(res.reason[impostors]) == ["low_similarity"] * 3
    assert list(res.reason[[9, 40]]) == ["no_face"] * 2
    assert np.isnan(res.filter_cos[[9, 40]]).all()
    others = np.setdiff1d(np.arange(labels.size), impostors + [9, 40])
    assert res.kept[others].all() and (res.filter_cos[others] > 0.7).all()
    assert res.counts() == {"kept": others.size, "no_face": 2, "low_similarity": 3, "low_quality": 0,
                            "near_duplicate": 0, "surplus": 0, "collision": 0, "replaced": 0, "too_few": 0}
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


def test_planted_collisions_are_found_and_resolved_by_policy():
    labels, emb, ids, rng = planted_set(n=10, k=6)
    # identity 7 renders as identity 2, identity 9 as identity 4: their realised centres collide
    for b, a in ((7, 2), (9, 4)):
        emb[labels == b] = unit(ids[a] + 0.08 * rng.standard_normal((6, ids.shape[1])))
    cfg = FilterConfig(min_cos=None, collision_cos=0.6, collision_policy="flag")
    flagged = filter_candidates(labels, emb, config=cfg)
    assert [(a, b) for a, b, _ in flagged.collisions] == [(2, 7), (4, 9)]
    assert all(c > 0.9 for _, _, c in flagged.collisions)
    assert flagged.kept.all() and flagged.dropped_identities.size == 0

    for policy in ("drop", "resample"):
        res = filter_candidates(labels, emb, config=FilterConfig(min_cos=None, collision_cos=0.6, collision_policy=policy))
        assert set(res.reason[np.isin(labels, [7, 9])]) == {"collision"}
        assert res.kept[~np.isin(labels, [7, 9])].all()
        assert res.dropped_identities.tolist() == [7, 9]
        assert res.resample.tolist() == ([7, 9] if policy == "resample" else [])
        assert np.isnan(res.centres[[7, 9]]).all() and res.kept_per_identity[[7, 9]].tolist() == [0, 0]


def test_collision_losers_follow_greedy_order():
    # 0-1, 1-2 collide: greedy keeps 0, drops 1, then keeps 2 (its only earlier clash, 1, is gone)
    assert collision_losers([(0, 1, 0.9), (1, 2, 0.9)], 3).tolist() == [False, True, False]
    assert collision_losers([(0, 2, 0.9), (1, 2, 0.9)], 3).tolist() == [False, False, True]


def test_near_duplicates_keep_the_better_ranked_copy():
    labels, emb, ids, rng = planted_set(n=4, k=6)
    emb[8] = unit(emb[7] + 1e-3 * rng.standard_normal(ids.shape[1]))  # a copy of row 7 (same identity 1)
    emb[23] = emb[19]  # exact copy, identity 3
    res = filter_candidates(labels, emb, id_vectors=ids, config=FilterConfig(collision_cos=None))
    assert res.reason[8] == "near_duplicate" and res.kept[7]
    assert res.reason[23] == "near_duplicate" and res.kept[19]
    assert res.counts()["near_duplicate"] == 2
    # rank by similarity: whichever copy is closer to the ID vector is kept
    res = filter_candidates(labels, emb, id_vectors=ids, config=FilterConfig(collision_cos=None, rank_by="similarity"))
    pair = [7, 8]
    best = pair[int(np.argmax(emb[pair] @ ids[1]))]
    assert res.kept[best] and res.reason[15 - best] == "near_duplicate"


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


def test_best_n_of_k_keeps_the_top_by_rank():
    labels, emb, ids, _ = planted_set(n=5, k=8, noise=0.3)
    res = filter_candidates(labels, emb, id_vectors=ids, config=FilterConfig(
        min_cos=None, keep_per_identity=3, rank_by="similarity", collision_cos=None, duplicate_cos=None))
    assert res.kept_per_identity.tolist() == [3] * 5
    for c in range(5):
        rows = np.flatnonzero(labels == c)
        top = rows[np.argsort(-res.filter_cos[rows])[:3]]
        assert set(np.flatnonzero(res.kept & (labels == c))) == set(top)
    assert res.counts()["surplus"] == 25
    # index order keeps the first three rendered
    first = surplus(labels, np.ones(labels.size, bool), -np.arange(labels.size, dtype=float), 3)
    assert not first[[0, 1, 2, 8, 9, 10]].any() and first[[3, 11]].all()


def test_quality_checks_detection_score_sharpness_and_pose():
    labels, emb, ids, _ = planted_set(n=2, k=5)
    det = np.full(10, 0.9, np.float32)
    det[1] = 0.2
    kps = np.repeat(TEMPLATE[None], 10, axis=0)
    kps[6, 2, 0] += 30  # nose far to the right: a near-profile face
    sharp = np.full(10, 200.0, np.float32)
    sharp[8] = 5.0
    cfg = FilterConfig(collision_cos=None, max_abs_yaw=45, min_sharpness=20)
    res = filter_candidates(labels, emb, id_vectors=ids, det_score=det, kps=kps, sharpness=sharp, config=cfg)
    assert np.flatnonzero(res.reason == "low_quality").tolist() == [1, 6, 8]
    assert res.pose[6, 0] > 45 and np.allclose(res.pose[0], 0, atol=1e-3)
    assert res.quality[0] == pytest.approx(0.9) and res.quality[1] < res.quality[0]
    # similarity wins over quality when both fail
    emb[1] = unit(ids[1])
    res = filter_candidates(labels, emb, id_vectors=ids, det_score=det, config=cfg)
    assert res.reason[1] == "low_similarity"


def test_pose_from_landmarks_reads_roll_yaw_and_pitch():
    angle = np.radians(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    centre = TEMPLATE.mean(0)
    rolled = (TEMPLATE - centre) @ rot.T + centre
    right, up = TEMPLATE.copy(), TEMPLATE.copy()
    right[2, 0] += 10
    up[2, 1] -= 8
    pose = pose_from_landmarks(np.stack([TEMPLATE, rolled, right, up]))
    np.testing.assert_allclose(pose[0], 0, atol=1e-4)
    np.testing.assert_allclose(pose[1], [0, 0, 20], atol=1e-3)
    assert 20 < pose[2, 0] < 40 and abs(pose[2, 1]) < 1 and abs(pose[2, 2]) < 1e-3
    assert 10 < pose[3, 1] < 40 and abs(pose[3, 0]) < 1
    with pytest.raises(InvalidInputError):
        pose_from_landmarks(np.zeros((2, 4, 2)))


def test_sharpness_ranks_blurred_below_sharp():
    rng = np.random.default_rng(0)
    sharp_img = rng.integers(0, 256, size=(112, 112, 3)).astype(np.float32)
    blurred = sharp_img.copy()
    for _ in range(4):
        blurred = (blurred + np.roll(blurred, 1, 0) + np.roll(blurred, 1, 1) + np.roll(blurred, (1, 1), (0, 1))) / 4
    s = sharpness(np.stack([sharp_img, blurred, np.full_like(sharp_img, 7)]).astype(np.uint8))
    assert s[0] > 10 * s[1] > 0 and s[2] == 0


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
    with pytest.raises(InvalidInputError, match="collision_policy"):
        FilterConfig(collision_policy="ignore")
    with pytest.raises(InvalidInputError, match="cosine"):
        FilterConfig(min_cos=2.0)
