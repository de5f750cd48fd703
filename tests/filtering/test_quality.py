"""Quality: detection score, pose from landmarks, sharpness."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InvalidInputError
from synthface.filtering import FilterConfig, filter_candidates, pose_from_landmarks, sharpness
from tests.helpers.filtering import TEMPLATE, planted_set, unit


def test_quality_checks_detection_score_sharpness_and_pose():
    labels, emb, ids, _ = planted_set(n=2, k=5)
    det = np.full(10, 0.9, np.float32)
    det[1] = 0.2
    kps = np.repeat(TEMPLATE[None], 10, axis=0)
    kps[6, 2, 0] += 30  # nose far to the right: a near-profile face
    sharp = np.full(10, 200.0, np.float32)
    sharp[8] = 5.0
    cfg = FilterConfig(min_cos=0.5, min_det_score=0.5)
    res = filter_candidates(labels, emb, id_vectors=ids, det_score=det, kps=kps, sharpness=sharp, config=cfg)
    assert np.flatnonzero(res.reason == "low_quality").tolist() == [1]
    assert res.pose[6, 0] > 45 and np.allclose(res.pose[0], 0, atol=1e-3)
    assert res.quality[0] == pytest.approx(0.9) and res.quality[1] < res.quality[0]
    assert res.quality[6] < res.quality[0] and res.quality[8] < 0.1  # a profile and a blurred image score low
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
