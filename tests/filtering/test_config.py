"""FilterConfig: one set of defaults (the recipe schema's), from_recipe, refusals."""

from __future__ import annotations

import pytest

from synthface.errors import InvalidInputError
from synthface.filtering import DROP_REASONS, FilterConfig
from synthface.recipe import FilteringConfig, parse_recipe


def test_the_defaults_are_the_recipe_s():
    recipe = FilteringConfig()
    config = FilterConfig()
    assert (config.min_cos, config.min_det_score, config.duplicate_cos) == (
        recipe.min_cos, recipe.min_det_score, recipe.near_duplicate_cos)


def test_from_recipe_fills_the_analyser_s_threshold_unless_the_recipe_sets_one():
    recipe = parse_recipe({"name": "t", "filtering": {"min_det_score": 0.3, "near_duplicate_cos": 0.9}})
    config = FilterConfig.from_recipe(recipe.filtering, same_person_cos=0.42, keep_per_identity=4)
    assert config == FilterConfig(min_cos=0.42, min_det_score=0.3, duplicate_cos=0.9, keep_per_identity=4)
    recipe = parse_recipe({"name": "t", "filtering": {"min_cos": 0.6}})
    assert FilterConfig.from_recipe(recipe.filtering, same_person_cos=0.42, keep_per_identity=1).min_cos == 0.6


def test_bad_settings_are_refused_and_reasons_are_declared_once():
    with pytest.raises(InvalidInputError, match="cosine"):
        FilterConfig(duplicate_cos=1.5)
    with pytest.raises(InvalidInputError, match="keep_per_identity"):
        FilterConfig(keep_per_identity=0)
    assert len(set(DROP_REASONS)) == len(DROP_REASONS) and "" not in DROP_REASONS
