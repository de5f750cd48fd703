"""The demo reads what a family declares: a plug-in family it has never heard of gets the right page."""

from __future__ import annotations

import pytest

from tests.helpers.plugins import install_plugin


@pytest.fixture
def disc(tmp_path, monkeypatch):
    install_plugin(tmp_path / "site", monkeypatch)
    yield "disc"
    from synthface.generators import registry

    registry._plugins_loaded = False


class StubAnalyzer:
    name, embedding_dim = "stub", 128


def test_the_demo_offers_a_plugin_family_by_its_declarations(disc):
    from synthface import demo

    assert demo.is_random_model(disc) and demo.generator_weights(disc) == [] and demo.missing_weights(disc) == []
    assert demo.sampler_settings(disc) == () and not demo.lcm_available(disc)
    assert disc in demo.installed_models()
    conditioner = demo.make_conditioner("auto", disc, StubAnalyzer())  # it declares no recogniser: the stand-in
    assert isinstance(conditioner, demo.StandInConditioner) and "Disc" in conditioner.note


def test_the_built_in_families_declare_what_the_page_shows():
    from synthface import demo

    assert demo.sampler_settings("tiny") == ("steps", "guidance") and demo.sampler_settings("vec2face-tiny") == ()
    assert not demo.lcm_available("tiny")  # a random model never gets LCM
    assert demo.generator_weights("vec2face") == [("vec2face",), ("vec2face-arcface", "arc2face-arcface")]
    assert demo.generator_weights("arc2face") == [("arc2face",), ("sd15",), ("arc2face-arcface",)]
