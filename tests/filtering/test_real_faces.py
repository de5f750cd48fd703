"""Filtering with a real recogniser as the test double for generated images: the six people of
insightface's t1.jpg, each seen through several augmentations and embedded by the offline dlib
backend; one person's image is planted under another identity and must be dropped."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

pytest.importorskip("dlib")

from synthface.faces import DLIB_SAME_PERSON_COS
from synthface.filtering import FilterConfig, filter_candidates, judge_identities
from tests.helpers.faces import dlib_analyzer, t1_faces, t1_image

AUGMENT = (
    lambda im: im,
    lambda im: im[:, ::-1],
    lambda im: np.clip(im.astype(np.float32) * 0.6, 0, 255).astype(np.uint8),
    lambda im: cv2.resize(im, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA),
    lambda im: cv2.GaussianBlur(im, (3, 3), 0),
)


@functools.cache
def person_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(labels, embeddings): person p of t1.jpg under each augmentation, embedded by dlib."""
    image = t1_image()
    crops, labels = [], []
    for p, face in enumerate(t1_faces()):
        x1, y1, x2, y2 = face.bbox
        m = 0.6 * (x2 - x1)
        person = image[int(max(y1 - m, 0)) : int(y2 + m), int(max(x1 - m, 0)) : int(x2 + m)]
        for change in AUGMENT:
            crops.append(np.ascontiguousarray(change(person)))
            labels.append(p)
    found = dlib_analyzer().analyze(crops)
    assert all(found), "dlib lost a face under an augmentation"
    return np.array(labels), np.array([faces[0].embedding for faces in found], np.float32)


@pytest.mark.parametrize("compare_to", ["centre", "id_vector"])
def test_a_person_planted_under_another_identity_is_dropped(compare_to):
    labels, emb = person_embeddings()
    labels = labels.copy()
    planted = int(np.flatnonzero(labels == 5)[2])  # person 5, darkened, filed under identity 0
    labels[planted] = 0
    # same-space case: the "ID vector" is the embedding of the un-augmented photo
    ids = emb[[int(np.flatnonzero(labels == p)[0]) for p in range(6)]] if compare_to == "id_vector" else None
    cfg = FilterConfig(min_cos=DLIB_SAME_PERSON_COS, duplicate_cos=None)
    res = filter_candidates(labels, emb, id_vectors=ids, config=cfg)
    assert res.compared_to == compare_to
    assert res.reason[planted] == "low_similarity"
    assert np.flatnonzero(~res.kept).tolist() == [planted]
    people = judge_identities(labels, emb, res.kept, res.reason, collision_cos=DLIB_SAME_PERSON_COS,
                              collision_policy="drop")
    assert people.collisions == []  # six different people: no two realised centres collide


def test_exact_copies_of_a_photo_are_near_duplicates_and_a_twin_identity_collides():
    labels, emb = person_embeddings()
    # identity 6 is person 2 again (another render of the same face): its centre collides with 2
    twin = np.flatnonzero(labels == 2)
    labels = np.concatenate([labels, np.full(twin.size, 6)])
    emb = np.concatenate([emb, emb[twin]])
    res = filter_candidates(labels, emb, config=FilterConfig(min_cos=DLIB_SAME_PERSON_COS, duplicate_cos=0.995))
    # the un-augmented and blurred photos embed almost identically: the later one is a near-duplicate
    assert res.counts()["near_duplicate"] >= 1
    people = judge_identities(labels, emb, res.kept, res.reason, collision_cos=DLIB_SAME_PERSON_COS,
                              collision_policy="drop")
    assert [(a, b) for a, b, _ in people.collisions] == [(2, 6)]
    assert not people.kept[labels == 6].any() and "collision" in set(people.reason[labels == 6])
    assert people.collided.tolist() == [6] and people.kept[labels == 2].any()
