"""The example plug-in family (tests/helpers/plugin_family) passes what every family passes."""

from __future__ import annotations

import pytest

from tests.helpers.family_tests import GeneratorFamilyTests
from tests.helpers.plugins import install_plugin


@pytest.fixture(scope="class")
def installed(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    install_plugin(tmp_path_factory.mktemp("site"), monkeypatch)
    yield
    monkeypatch.undo()
    from synthface.generators import registry

    registry._plugins_loaded = False


@pytest.mark.usefixtures("installed")
class TestDiscFamily(GeneratorFamilyTests):
    model = "disc"

    @property
    def family_class(self):
        from synthface_disc import DiscFamily

        return DiscFamily

    @pytest.fixture(scope="class")
    def renderer(self, installed, one_thread):
        from synthface.generators import build_renderer

        return build_renderer(self.model, device="cpu")
