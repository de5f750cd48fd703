"""The dlib backend on real photos: six faces in t1.jpg, alignment accuracy, same vs different."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from synthface.faces import (
    ARCFACE_TEMPLATE,
    DLIB_SAME_PERSON_COS,
    DLIB_SAME_PERSON_DISTANCE,
    get_analyzer,
    load_image,
    norm_crop,
)
from synthface.faces.dlib_backend import DLIB_TYPICAL_NORM
from tests.helpers.faces import HANKS, astronaut, dlib_analyzer, t1_faces, t1_image


def test_finds_the_six_people_largest_first():
    faces = t1_faces()
    assert len(faces) == 6
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    for f in faces:
        assert f.backend == "dlib" and f.embedding.shape == (128,)
        assert abs(np.linalg.norm(f.embedding) - 1) < 1e-5
        x1, y1, x2, y2 = f.bbox
        assert x1 < f.kps[:, 0].min() and f.kps[:, 0].max() < x2  # points inside their box
        assert f.kps[0, 0] < f.kps[1, 0] and f.kps[3, 0] < f.kps[4, 0]  # ArcFace order: image-left first
        assert f.kps[:2, 1].max() < f.kps[2, 1] < f.kps[3:, 1].min()  # eyes above nose above mouth
    centres = np.array([(f.bbox[:2] + f.bbox[2:]) / 2 for f in faces])
    assert np.min(np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(6) * 1e9) > 100
    only = dlib_analyzer().analyze([t1_image()])[0]
    assert len(only) == 1 and np.array_equal(only[0].bbox, faces[0].bbox)


def test_aligned_crops_put_the_eyes_on_the_template():
    """Detect landmarks again inside each aligned crop (upscaled 2x, padded): eye centres within 2 px.

    One face in t1.jpg is turned ~45 degrees; no 5-point similarity can make a face that turned
    look frontal, and dlib's frontal detector rightly does not find it in its crop. Every other
    face must be found and aligned to 2 px.
    """
    analyzer = dlib_analyzer()
    image = t1_image()
    errors = []
    for f in t1_faces():
        big = cv2.resize(norm_crop(image, f.kps), (224, 224), interpolation=cv2.INTER_CUBIC)
        again = analyzer.detect([np.pad(big, ((56, 56), (56, 56), (0, 0)), mode="edge")])[0]
        if again:
            eyes = (again[0].kps[:2] - 56) / 2.0
            errors.append(np.abs(eyes - ARCFACE_TEMPLATE[:2]).max())
    assert len(errors) >= 5
    assert max(errors) < 2.0, errors


def test_different_people_score_below_threshold():
    emb = np.array([f.embedding for f in t1_faces()])
    cos = emb @ emb.T
    off = cos[~np.eye(6, dtype=bool)]
    assert off.max() < DLIB_SAME_PERSON_COS
    for other in (astronaut(), load_image(HANKS)):
        e = dlib_analyzer().analyze([other])[0][0].embedding
        assert (emb @ e).max() < DLIB_SAME_PERSON_COS


@pytest.mark.parametrize(
    "change",
    [
        lambda im: im[:, ::-1],
        lambda im: cv2.resize(im, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
        lambda im: cv2.resize(im, None, fx=1.4, fy=1.4, interpolation=cv2.INTER_LINEAR),
        lambda im: np.clip(im.astype(np.float32) * 0.55, 0, 255).astype(np.uint8),
        lambda im: (255 * (im / 255.0) ** 1.8).astype(np.uint8),
    ],
    ids=["flipped", "smaller", "larger", "darker", "gamma"],
)
def test_same_face_changed_scores_above_threshold(change):
    analyzer = dlib_analyzer()
    images = (astronaut(), *t1_people())
    changed = analyzer.analyze([np.ascontiguousarray(change(im)) for im in images])
    for ref, new in zip(reference_embeddings(), changed):
        assert float(ref @ new[0].embedding) > DLIB_SAME_PERSON_COS


@functools.cache
def reference_embeddings() -> list[np.ndarray]:
    return [faces[0].embedding for faces in dlib_analyzer().analyze([astronaut(), *t1_people()])]


@functools.cache
def t1_people() -> tuple[np.ndarray, ...]:
    """Each person of t1.jpg cut out with a generous margin, so 'the face' is unambiguous."""
    image = t1_image()
    out = []
    for f in t1_faces():
        x1, y1, x2, y2 = f.bbox
        m = 0.6 * (x2 - x1)
        out.append(image[int(max(y1 - m, 0)) : int(y2 + m), int(max(x1 - m, 0)) : int(x2 + m)])
    return tuple(out)


def test_threshold_matches_dlib_distance_rule():
    """On raw descriptors of typical norm, cos above the constant <=> distance below 0.6."""
    assert DLIB_SAME_PERSON_COS == pytest.approx(1 - DLIB_SAME_PERSON_DISTANCE**2 / (2 * DLIB_TYPICAL_NORM**2), abs=0.005)
    analyzer = dlib_analyzer()
    image = t1_image()
    raw = np.array([np.array(d) for d in analyzer._recognizer.compute_face_descriptor(analyzer.crops(image, list(t1_faces())))])
    norms = np.linalg.norm(raw, axis=1)
    assert 1.3 < np.median(norms) < 1.7  # the typical norm the constant assumes
    dist = np.linalg.norm(raw[:, None] - raw[None], axis=-1)[~np.eye(6, dtype=bool)]
    assert dist.min() > DLIB_SAME_PERSON_DISTANCE  # dlib's own rule agrees: six different people


def test_embed_from_112_crops_agrees_with_analyze_and_batches():
    analyzer = dlib_analyzer()
    image = t1_image()
    faces = t1_faces()
    crops = np.stack([norm_crop(image, f.kps) for f in faces])
    batch = analyzer.embed(crops)
    assert batch.shape == (6, 128) and batch.dtype == np.float32
    one_by_one = np.concatenate([analyzer.embed(c[None]) for c in crops])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    direct = np.array([f.embedding for f in faces])
    assert (np.sum(batch * direct, axis=1) > 0.98).all()


def test_tight_crop_is_found_by_padding_retry():
    hanks = load_image(HANKS)  # an aligned 112 x 112 crop: the face touches the border
    faces = dlib_analyzer().detect([hanks])[0]
    assert len(faces) == 1
    assert np.abs(faces[0].kps[:2] - ARCFACE_TEMPLATE[:2]).max() < 4
    no_retry = get_analyzer("dlib", pad_retry=0).detect([hanks])[0]
    assert len(no_retry) <= 1


def test_68_point_option_agrees_with_default():
    a68 = get_analyzer("dlib", landmarks=68)
    assert "commercial" in a68.license and "commercial" not in dlib_analyzer().license
    face = a68.analyze([astronaut()])[0][0]
    ref = dlib_analyzer().analyze([astronaut()])[0][0]
    assert np.abs(face.kps[:2] - ref.kps[:2]).max() < 4
    assert float(face.embedding @ ref.embedding) > DLIB_SAME_PERSON_COS
