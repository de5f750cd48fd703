"""IDiff-Face's tiny model passes what every family passes, and the family declares what it has."""

from __future__ import annotations

import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.generators import RenderSettings, build_renderer, model_licence
from synthface.generators.idiff.family import IDiffFaceFamily
from tests.helpers.family_tests import GeneratorFamilyTests


class TestIDiffFaceFamily(GeneratorFamilyTests):
    model = "idiff-tiny"
    family_class = IDiffFaceFamily
    batch_atol = 1  # conv/GEMM kernels differ by batch size before the uint8 rounding


def test_idiff_declares_its_space_weights_options_and_licences():
    family = IDiffFaceFamily()
    assert family.options == {"steps", "guidance", "sampler", "negatives"} and family.native_size == 112
    # conditioned on ElasticFace-Arc, not Arc2Face's ArcFace: the fallback is noted
    assert family.conditioning("idiff-uiface-casia") == ("idiff-elasticface", "arc2face-arcface")
    assert family.conditioning_note("idiff-uiface-casia", "arc2face-arcface")
    assert not family.conditioning_note("idiff-uiface-casia", "idiff-elasticface")
    assert family.required_weights("idiff-uiface-casia") == [
        ("idiff-uiface-casia",), ("idiff-vq-f4",), ("idiff-elasticface", "arc2face-arcface")]
    assert family.required_weights("idiff-tiny") == []
    for model in ("idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-ffhq-cpd50", "negfacediff-casia-cpd25"):
        licence = model_licence(model)
        assert licence.restricted and "non-commercial" in str(licence)
    assert "CASIA-WebFace" in str(model_licence("idiff-uiface-casia"))
    assert "FFHQ" in str(model_licence("idiff-ffhq-cpd25"))


def test_it_renders_112_pixels_only():
    with pytest.raises(InvalidInputError, match="112 x 112 images only"):
        IDiffFaceFamily().call_kwargs(None, RenderSettings(resolution=128))


def test_uint8_is_torchvision_rounding_half_up():
    images = torch.tensor([0.0, 0.5 / 255, 1.5 / 255 - 1e-7, 254.5 / 255, 1.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    got = IDiffFaceFamily().to_uint8(images)[0][0, :, 0]
    assert got.tolist() == [0, 1, 1, 255, 255]


def test_the_recipe_model_renders_the_sampler_it_names():
    renderer = build_renderer("idiff-tiny", device="cpu", dtype="fp32",
                              settings=RenderSettings(steps=4, guidance=2.0, sampler={"name": "uiface",
                                                                                      "stage_threshold": 500}))
    import numpy as np

    conditions = np.eye(2, 512, dtype=np.float32)
    two_stage = renderer(conditions, [0, 1])
    plain = build_renderer("idiff-tiny", device="cpu", dtype="fp32", settings=RenderSettings(steps=4, guidance=2.0))
    assert [im.shape for im in two_stage] == [(112, 112, 3)] * 2
    assert any(not np.array_equal(a, b) for a, b in zip(two_stage, plain(conditions, [0, 1])))
