"""A generator family from another package: found through the "synthface.generators" entry points,
listed by `synthface models list`, run by `synthface run smoke --set generation.model=<its name>`."""

from __future__ import annotations

import pytest

from synthface.errors import InvalidInputError
from tests.cli_helpers import run_cli_inprocess
from tests.helpers.plugins import DISTRIBUTION, install_plugin


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    yield install_plugin(tmp_path / "site", monkeypatch)
    from synthface.generators import registry

    registry._plugins_loaded = False  # the next test's look-up forgets the plug-in with sys.path restored


def test_an_installed_plugin_is_a_family_like_the_built_in_ones(plugin):
    from synthface.generators import families, family_for, generator_names

    family = family_for("disc")
    assert family.name == "disc" and type(family).__module__ == "synthface_disc"
    assert "disc" in generator_names() and families()[0].catch_all  # the built-in default stays first
    assert family_for("tiny").name == "arc2face"


def test_models_list_shows_the_plugin(plugin, capsys):
    result = run_cli_inprocess(capsys, "models", "list")
    assert result.returncode == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "│ disc" in line)
    assert [cell.strip() for cell in row.split("│")[1:5]] == ["disc", "disc", "-", "64"]  # model, family, options, size
    assert "MIT" in result.stdout


def test_smoke_recipe_runs_on_the_plugin(plugin, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    result = run_cli_inprocess(capsys, "run", "smoke", "--set", "generation.model=disc", "--out", out)
    assert result.returncode == 0, result.output
    assert (out / "finalize.done").is_file()
    assert 'model = "disc"' in (out / "recipe.toml").read_text()
    assert len(list((out / "export" / "imagefolder").rglob("*.jpg"))) == 8 * 4


def test_a_broken_plugin_is_an_error_naming_its_distribution(tmp_path, monkeypatch):
    from synthface.generators import family_for, registry

    install_plugin(tmp_path / "site", monkeypatch, entry="broken = synthface_disc_missing:Family",
                   distribution="synthface-broken")
    with pytest.raises(InvalidInputError, match="generator plug-in 'broken'.*synthface-broken failed to load.*"
                                                "pip uninstall synthface-broken"):
        family_for("tiny")
    with pytest.raises(InvalidInputError, match="synthface-broken"):  # every look-up, not only the first
        family_for("tiny")
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_plugin_error", None)


def test_a_plugin_that_is_not_a_family_is_refused(tmp_path, monkeypatch):
    from synthface.generators import family_for

    install_plugin(tmp_path / "site", monkeypatch, entry="odd = synthface_disc:DiscPipeline", distribution=DISTRIBUTION)
    with pytest.raises(InvalidInputError, match="must be a GeneratorFamily"):
        family_for("tiny")
