"""Vec2Face's tiny models pass what every family passes, and the family declares what it has."""

from __future__ import annotations

import numpy as np

from synthface.generators.vec2face.family import Vec2FaceFamily
from tests.helpers.family_tests import GeneratorFamilyTests


class TestVec2FaceFamily(GeneratorFamilyTests):
    model = "vec2face-tiny"
    family_class = Vec2FaceFamily
    batch_atol = 1  # GEMM rounding before truncation (tests/test_vec2face.py checks the floats)


class TestVec2FacePlusFamily(GeneratorFamilyTests):
    model = "vec2face-plus-tiny"
    family_class = Vec2FaceFamily
    batch_atol = 1  # GEMM rounding before truncation (tests/test_vec2face.py checks the floats)

    def test_poses_follow_the_declaration(self, renderer):
        assert renderer.takes_poses and self.model in renderer.family.pose_models
        images = renderer(self.conditions(2), [0, 1], poses=np.array([[30.0, 0.0], [-30.0, 0.0]], np.float32))
        assert len(images) == 2


def test_vec2face_declares_its_recognisers_and_options():
    family = Vec2FaceFamily()
    assert family.options == {"pose", "attrop"} and family.native_size == 112 and not family.catch_all
    assert family.conditioning("vec2face") == ("vec2face-arcface", "arc2face-arcface")
    assert family.conditioning("vec2face-tiny") == ("arc2face-arcface",)
    assert family.required_weights("vec2face") == [("vec2face",), ("vec2face-arcface", "arc2face-arcface")]
    assert family.conditioning_note("vec2face", "arc2face-arcface") and not family.conditioning_note("vec2face", "vec2face-arcface")
    assert hasattr(family.attrop_tools(), "attrop")
