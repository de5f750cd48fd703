"""Arc2Face's tiny model passes what every family passes, and the family declares what it has."""

from __future__ import annotations

from synthface.generators.arc2face.family import Arc2FaceFamily
from tests.helpers.family_tests import GeneratorFamilyTests


class TestArc2FaceFamily(GeneratorFamilyTests):
    model = "tiny"
    family_class = Arc2FaceFamily


def test_arc2face_declares_its_sampler_lcm_and_weights():
    family = Arc2FaceFamily()
    assert family.catch_all and {"steps", "guidance", "lcm"} == family.options and family.lcm_lora
    assert family.required_weights("arc2face") == [("arc2face",), ("sd15",), ("arc2face-arcface",)]
    assert family.required_weights("/some/local/folder") == [("arc2face-arcface",)]
