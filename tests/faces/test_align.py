"""Image loading, the Face record, and alignment (cv2 and the batched torch warp agree)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.faces import ARCFACE_TEMPLATE, Face, as_rgb_uint8, estimate_similarity, load_image, norm_crop
from synthface.faces.align import (
    estimate_similarity_torch,
    invert_affine,
    norm_crop_torch,
    transform_points,
    warp_affine_torch,
)
from tests.helpers.faces import t1_image


def random_similarity(rng, scale=None):
    angle = rng.uniform(-0.6, 0.6)
    s = scale if scale is not None else rng.uniform(0.5, 4.0)
    return np.array(
        [[s * np.cos(angle), -s * np.sin(angle), rng.uniform(0, 300)],
         [s * np.sin(angle), s * np.cos(angle), rng.uniform(0, 300)]]
    )


def test_similarity_recovers_known_transform_and_rejects_reflection():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = random_similarity(rng)
        pts = transform_points(ARCFACE_TEMPLATE, invert_affine(m))  # points that m sends onto the template
        np.testing.assert_allclose(estimate_similarity(pts), m, atol=1e-9)
    mirrored = ARCFACE_TEMPLATE * [-1, 1]
    fit = estimate_similarity(mirrored)
    assert np.linalg.det(fit[:, :2]) > 0  # a similarity, never a mirror


def test_similarity_least_squares_beats_perturbations():
    rng = np.random.default_rng(1)
    src = ARCFACE_TEMPLATE * 2 + rng.normal(0, 3, (5, 2))
    m = estimate_similarity(src)
    err = ((transform_points(src, m) - ARCFACE_TEMPLATE) ** 2).sum()
    for _ in range(50):
        da, db, tx, ty = rng.normal(0, 1e-3, 4) * [1, 1, 100, 100]  # stay a similarity
        other = m + [[da, -db, tx], [db, da, ty]]
        assert ((transform_points(src, other) - ARCFACE_TEMPLATE) ** 2).sum() >= err - 1e-9


def test_torch_similarity_matches_numpy():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 500, (7, 5, 2))
    batched = estimate_similarity_torch(torch.from_numpy(src)).numpy()
    for i in range(7):
        np.testing.assert_allclose(batched[i], estimate_similarity(src[i]), atol=1e-8)


def test_norm_crop_puts_points_on_template():
    rng = np.random.default_rng(3)
    image = t1_image()
    m = random_similarity(rng, scale=0.4)  # template -> image space, face ~ 45 px wide
    kps = transform_points(ARCFACE_TEMPLATE, m)
    crop = norm_crop(image, kps)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    # the crop equals sampling the image at the template's pre-image
    inv = invert_affine(estimate_similarity(kps))
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        sx, sy = transform_points(np.array([[x, y]]), inv)[0]
        assert np.abs(crop[y, x].astype(int) - image[int(round(sy)), int(round(sx))].astype(int)).max() < 60
    assert norm_crop(image, kps * 1, size=224).shape == (224, 224, 3)


@pytest.mark.parametrize("layout", ["nhwc_uint8", "nchw_float"])
def test_torch_warp_matches_cv2(layout):
    rng = np.random.default_rng(4)
    image = t1_image()
    kps = np.stack([transform_points(ARCFACE_TEMPLATE, random_similarity(rng, scale=s)) for s in (0.8, 1.5, 3.0)])
    expected = np.stack([norm_crop(image, k) for k in kps]).astype(np.float32)
    batch = torch.from_numpy(np.repeat(image[None], 3, axis=0))
    if layout == "nchw_float":
        batch = batch.permute(0, 3, 1, 2).float()
    got = norm_crop_torch(batch, torch.from_numpy(kps)).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got - expected)
    assert diff.max() <= 1.0 and diff.mean() < 0.35  # cv2 rounds to uint8 and uses 1/32-px steps


def test_torch_warp_outside_is_black():
    img = torch.full((1, 3, 10, 10), 200.0)
    shift = torch.tensor([[[1.0, 0.0, 50.0], [0.0, 1.0, 0.0]]])  # moves the image out of a 20x20 view
    out = warp_affine_torch(img, shift, (20, 20))
    assert out.abs().max() == 0


def test_face_record_normalises_types():
    f = Face(bbox=[0, 0, 10, 20], kps=np.zeros(10), det_score=np.float64(0.9))
    assert f.bbox.dtype == np.float32 and f.kps.shape == (5, 2) and f.area == 200 and f.embedding is None
    g = f.with_embedding(np.ones(4, dtype=np.float64))
    assert g.embedding.dtype == np.float32 and f.embedding is None


def test_load_image_modes(tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(5).uniform(0, 255, (20, 30, 3))).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(load_image((tmp_path / "a.png").read_bytes()), rgb)
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "a4.png")
    out = load_image(tmp_path / "a4.png")
    np.testing.assert_array_equal(out[1:], rgb[1:])
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent -> white
    deep = (gray.astype(np.uint16) << 8) | 0x7F
    Image.fromarray(deep).save(tmp_path / "d16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "d16.png"), np.repeat(gray[..., None], 3, 2))
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").shape == (20, 30, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").shape == (20, 30, 3)


def test_as_rgb_uint8_arrays():
    assert as_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_uint8(np.ones((4, 5, 1), np.float32)).max() == 255
    assert as_rgb_uint8(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
