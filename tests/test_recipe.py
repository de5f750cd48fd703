"""Recipes: every shipped recipe validates; bad values name the field and the allowed range."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from synthface.errors import FileFormatError, InvalidInputError
from synthface.recipe import Recipe, load_recipe, parse_recipe

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("name", ["smoke", "quickstart", "hsface10k", "scale-1m", "idperturb10k", "uiface10k", "negfacediff10k"])
def test_shipped_recipes_validate_and_document_themselves(name):
    path = PIPELINES / f"{name}.toml"
    recipe = load_recipe(path)
    assert recipe.name == name
    header = path.read_text().split("\nname")[0]
    assert "Makes:" in header and "Weights:" in header  # what it makes and which weights it needs
    assert ("Time:" in header) or ("minutes" in header)


def test_hsface10k_is_the_standard_comparison_size():
    recipe = load_recipe(PIPELINES / "hsface10k.toml")
    assert (recipe.identities.count, recipe.variation.images_per_identity) == (10_000, 50)
    assert recipe.variation.perturbation == {0.96: 0.4, 0.9: 0.4, 0.82: 0.2}


def test_overrides_parse_values_as_toml(tmp_path):
    recipe = load_recipe(
        PIPELINES / "smoke.toml",
        ["identities.count=5", "generation.guidance=2.5", "export.formats=['parquet']", "name=renamed", "filtering.enabled=true"],
    )
    assert recipe.identities.count == 5 and recipe.generation.guidance == 2.5
    assert recipe.export.formats == ["parquet"] and recipe.name == "renamed" and recipe.filtering.enabled


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"identities": {"count": 0}}, "identities.count must be greater than or equal to 1 (given: 0)"),
        ({"identities": {"max_cos": 1.2}}, "identities.max_cos must be less than 1 (given: 1.2)"),
        ({"generation": {"dtype": "fp8"}}, "generation.dtype must be one of 'fp32', 'fp16' or 'bf16' (given: 'fp8')"),
        ({"generation": {"resolution": 100}}, "generation.resolution must be a multiple of 8"),
        ({"identitys": {}}, "identitys is not a recipe field"),
        ({"variation": {"perturbation": {"1.5": 1.0}}}, "target cosine 1.5 must lie in (0, 1]"),
        ({"identities": {"prior": "gaussian"}}, "the gaussian prior needs identities.reference"),
        ({"export": {"formats": ["lmdb"]}}, "export.formats.0 must be one of"),
    ],
)
def test_invalid_values_name_the_field_and_range(data, fragment):
    with pytest.raises(InvalidInputError) as info:
        parse_recipe(data, source="r.toml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("r.toml is not a valid recipe: ")


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(FileFormatError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = [unclosed\n")
    with pytest.raises(FileFormatError, match="not valid TOML"):
        load_recipe(tmp_path / "bad.toml")
    with pytest.raises(InvalidInputError, match="section.field=value"):
        load_recipe(PIPELINES / "smoke.toml", ["identities.count"])


def test_toml_round_trip_and_fingerprint():
    recipe = load_recipe(PIPELINES / "hsface10k.toml")
    again = parse_recipe(tomllib.loads(recipe.to_toml()))
    assert again == recipe
    assert again.fingerprint() == recipe.fingerprint()
    # Batch size and device change speed, not data; the seed changes data.
    faster = recipe.model_copy(deep=True)
    faster.generation.batch_size = 7
    assert faster.fingerprint() == recipe.fingerprint()
    other = recipe.model_copy(deep=True)
    other.seed = 1
    assert other.fingerprint() != recipe.fingerprint()


def test_fields_added_later_keep_old_fingerprints():
    """Values computed by the code before identities.attrop.yaw_target / max_pose_error (and the loss
    weights and checks: identity_weight, quality_scale, pose_scale, max_identity_loss,
    max_quality_gap) existed: a recipe that leaves them unset (or at their defaults) keeps its
    fingerprint, so its runs resume."""
    base = {"name": "fp", "seed": 3, "identities": {"count": 10, "max_cos": 0.3},
            "generation": {"model": "vec2face", "allow_pickle": True}}
    attrop = {**base, "identities": {**base["identities"], "attrop": {"estimators": "vec2face", "max_steps": 7}}}
    assert parse_recipe(base).fingerprint() == "dbfbd9d031d54021"
    assert parse_recipe(attrop).fingerprint() == "a677497a33a0fa34"
    explicit = tomllib.loads(parse_recipe(attrop).to_toml())  # to_toml writes max_pose_error = 5.0
    assert explicit["identities"]["attrop"]["max_pose_error"] == 5.0
    assert explicit["identities"]["attrop"]["quality_scale"] == 1.0
    assert parse_recipe(explicit).fingerprint() == "a677497a33a0fa34"
    yaw = parse_recipe(attrop).model_copy(deep=True)
    yaw.identities.attrop.yaw_target = 30.0
    assert parse_recipe(tomllib.loads(yaw.to_toml())) == yaw
    assert yaw.fingerprint() != "a677497a33a0fa34"
    # left out only at their defaults: any other value of a field added later changes the data
    changed = {}
    for field, value in (("max_pose_error", 3.0), ("identity_weight", 50.0), ("quality_scale", 1 / 30),
                         ("pose_scale", 1 / 90), ("max_identity_loss", 0.2), ("max_quality_gap", 2.0)):
        other = yaw.model_copy(deep=True)
        setattr(other.identities.attrop, field, value)
        changed[field] = other.fingerprint()
    assert yaw.fingerprint() not in changed.values() and len(set(changed.values())) == len(changed), changed
    yaw.identities.attrop.max_pose_error = 3.0
    assert len({yaw.fingerprint(), parse_recipe(tomllib.loads(yaw.to_toml())).fingerprint()}) == 1


def test_candidates_per_identity_rounds_up():
    assert Recipe(variation={"images_per_identity": 50, "overgenerate": 1.3}).variation.candidates_per_identity == 65
    assert Recipe(variation={"images_per_identity": 3, "overgenerate": 1.5}).variation.candidates_per_identity == 5


def test_non_ascii_text_is_written_as_valid_toml_and_ascii_text_as_before():
    from synthface.recipe import _toml_string, loads_recipe_toml

    recipe = parse_recipe({"name": "smoke 😀 ünï", "description": "Plumbing — 😀\ttab \"quoted\" \\ back\x7fdel",
                           "filtering": {"analyzer_options": {"😀 key": "value ü"}}})
    again = parse_recipe(tomllib.loads(recipe.to_toml()))  # strict TOML: no \\ud83d surrogate escapes
    assert again == recipe and again.fingerprint() == recipe.fingerprint()
    assert "😀" in recipe.to_toml() and "\\ud83d" not in recipe.to_toml()
    import json

    for text in ["smoke", "a \"b\" \\ c", "tab\tnew\nline", "\x00\x1f", "x = { y }"]:
        assert _toml_string(text) == json.dumps(text)  # ASCII: the bytes synthface always wrote
    # A recipe.toml written before this (JSON's surrogate pairs) is still read.
    assert loads_recipe_toml('name = "smoke \\ud83d\\ude00"')["name"] == "smoke 😀"
    with pytest.raises(tomllib.TOMLDecodeError):
        loads_recipe_toml('name = "lone \\ud83d"')


@pytest.mark.parametrize(("data", "fragment"), [
    ({"variation": {"perturbation": {"1.0": float("nan")}}}, "variation.perturbation.1.0 must be a finite number"),
    ({"variation": {"perturbation": {"1.0": 1.0, "0.9": float("inf")}}}, "must be a finite number"),
    ({"variation": {"perturbation": {"nan": 1.0}}}, "target cosine nan must lie in (0, 1]"),
    ({"filtering": {"min_det_score": float("inf")}}, "filtering.min_det_score must be a finite number"),
    ({"variation": {"pose": {"yaw": [float("-inf"), 0.0]}}}, "variation.pose.yaw must be [least, largest]"),
    ({"generation": {"guidance": float("inf")}}, "generation.guidance must be less than or equal to 30"),
    ({"identities": {"exclude_max_cos": 0.1}}, "identities.exclude_max_cos applies only with identities.exclude"),
])
def test_non_finite_numbers_and_settings_without_their_section_are_refused(data, fragment):
    with pytest.raises(InvalidInputError, match="not a valid recipe") as info:
        parse_recipe(data, source="r.toml")
    assert fragment in str(info.value)


@pytest.mark.parametrize(("variation", "fragment"), [
    ({"perturbation": "boundd"}, "variation.perturbation must be a {cosine = share} mixture such as"),
    ({"perturbation": 0.9}, "or the word \"bounded\" (IDperturb's bounded perturbation), given 0.9"),
    ({"bounded": {"floor": 0.3}}, "variation.bounded applies only with variation.perturbation = \"bounded\""),
    ({"perturbation": {"1.0": 1.0}, "bounded": {}}, "remove the [variation.bounded] section"),
    ({"perturbation": "bounded", "bounded": {"floor": 1.0}}, "variation.bounded.floor must be less than 1"),
    ({"perturbation": "bounded", "bounded": {"floor": -1.2}}, "variation.bounded.floor must be greater than or equal to -1"),
    ({"perturbation": "bounded", "bounded": {"max_cos": 1.01}}, "variation.bounded.max_cos must be less than or equal to 1"),
    ({"perturbation": "bounded", "bounded": {"floor": 0.6, "max_cos": 0.6}},
     "variation.bounded has max_cos = 0.6 at or below floor = 0.6"),
    ({"perturbation": "bounded", "bounded": {"floor": 0.5, "max_cos": 0.2}}, "so max_cos must be greater than floor"),
    ({"perturbation": "bounded", "bounded": {"floor": float("nan")}}, "variation.bounded.floor"),
    ({"perturbation": "bounded", "bounded": {"min_cos": 0.4}}, "variation.bounded.min_cos is not a recipe field"),
])
def test_bounded_perturbation_settings_are_refused_in_one_paragraph(variation, fragment):
    with pytest.raises(InvalidInputError) as info:
        parse_recipe({"variation": variation}, source="r.toml")
    message = str(info.value)
    assert fragment in message and message.startswith("r.toml is not a valid recipe: ") and "\n" not in message


def test_bounded_perturbation_fingerprints_its_settings_in_force():
    """perturbation = "bounded" without [variation.bounded] runs at IDperturb's floor 0.4 and max_cos 1.0,
    so it is the same data (and fingerprint) as those values written out; mixture recipes keep theirs
    (the shipped ones: tests/test_byte_identity.py)."""
    plain = parse_recipe({"variation": {"perturbation": "bounded"}})
    assert plain.variation.is_bounded and plain.variation.bounded is None
    assert (plain.variation.bounded_settings.floor, plain.variation.bounded_settings.max_cos) == (0.4, 1.0)
    explicit = parse_recipe({"variation": {"perturbation": "bounded", "bounded": {"floor": 0.4, "max_cos": 1.0}}})
    assert explicit.fingerprint() == plain.fingerprint()
    other = parse_recipe({"variation": {"perturbation": "bounded", "bounded": {"floor": 0.5}}})
    mixture = parse_recipe({})
    assert len({plain.fingerprint(), other.fingerprint(), mixture.fingerprint()}) == 3
    assert mixture.fingerprint() == parse_recipe({"variation": {"perturbation": {"1.0": 1.0}}}).fingerprint()
    for recipe in (plain, other):  # written out and read back: the same recipe
        text = recipe.to_toml()
        assert 'perturbation = "bounded"' in text
        again = parse_recipe(tomllib.loads(text))
        assert again == recipe and again.fingerprint() == recipe.fingerprint()
    from_set = load_recipe(PIPELINES / "smoke.toml", ["variation.perturbation=bounded", "variation.bounded.floor=0.5"])
    assert from_set.variation.is_bounded and from_set.variation.bounded_settings.floor == 0.5  # a bare word: a string


@pytest.mark.parametrize(("sampler", "fragment"), [
    ({"name": "cfg", "mse_threshold": 0.01}, "generation.sampler sets mse_threshold = 0.01, one of UIFace's two-stage "
     "thresholds, but name = 'cfg': set name = \"uiface\" to use it, or remove mse_threshold"),
    ({"name": "ddpm", "stage_threshold": 300}, "sets stage_threshold = 300, one of UIFace's two-stage thresholds, but "
     "name = 'ddpm'"),
    ({"negative_scale": 1.0}, "generation.sampler sets negative_scale = 1.0, which weights NegFaceDiff's negative "
     "identity, but no negative is chosen: set negative = \"far\" (or \"close\", \"mid\") to use it, or remove "
     "negative_scale"),
    ({"adaptive_negative": True}, "sets adaptive_negative = true, which weights NegFaceDiff's negative identity"),
    ({"name": "uiface", "negative": "far"}, "sets negative = 'far' with name = \"uiface\", but NegFaceDiff's negative "
     "guidance applies to the 'cfg' and 'ddpm' samplers"),
    ({"name": "uiface", "mse_threshold": 0}, "generation.sampler.mse_threshold must be greater than 0"),
    ({"name": "uiface", "mse_threshold": 1.5}, "generation.sampler.mse_threshold must be less than or equal to 1"),
    ({"name": "uiface", "mse_threshold": float("nan")}, "generation.sampler.mse_threshold"),
    ({"name": "uiface", "stage_threshold": 1000}, "generation.sampler.stage_threshold must be less than or equal to 999"),
    ({"name": "uiface", "stage_threshold": -1}, "generation.sampler.stage_threshold must be greater than or equal to 0"),
    ({"name": "uiface", "stage_threshold": 500.5}, "generation.sampler.stage_threshold"),
    ({"negative": "fc"}, "generation.sampler.negative must be one of 'far', 'close' or 'mid' (given: 'fc')"),
    ({"negative": "far", "negative_scale": -0.1}, "generation.sampler.negative_scale must be greater than or equal to 0"),
    ({"negative": "far", "negative_scale": float("inf")}, "generation.sampler.negative_scale"),
    ({"negative": "far", "adaptive_negative": 1}, "generation.sampler.adaptive_negative"),
    ({"steps": 10}, "generation.sampler.steps is not a recipe field"),
])
def test_sampler_settings_are_refused_in_one_paragraph(sampler, fragment):
    with pytest.raises(InvalidInputError) as info:
        parse_recipe({"generation": {"sampler": sampler}}, source="r.toml")
    message = str(info.value)
    assert fragment in message and message.startswith("r.toml is not a valid recipe: ") and "\n" not in message


def test_a_negative_needs_another_identity():
    with pytest.raises(InvalidInputError, match=r"generation.sampler.negative = 'mid' takes each identity's negative "
                       r"from the other identities of the bank, but identities.count = 1: raise identities.count"):
        parse_recipe({"identities": {"count": 1}, "generation": {"sampler": {"negative": "mid"}}})
    assert parse_recipe({"identities": {"count": 2}, "generation": {"sampler": {"negative": "mid"}}})


def test_sampler_section_is_out_of_the_fingerprint_while_unset_and_in_it_when_set():
    """Recipes written before [generation.sampler] keep their fingerprints (the shipped ones:
    tests/test_byte_identity.py); every setting of the section changes the data."""
    from synthface.recipe import SamplerConfig

    base = {"name": "fp", "seed": 3, "identities": {"count": 10}, "generation": {"model": "idiff-uiface-casia"}}
    unset = parse_recipe(base)
    assert unset.generation.sampler is None and unset.fingerprint() == parse_recipe(
        {**base, "generation": {**base["generation"], "sampler": None}}).fingerprint()
    assert "sampler" not in unset.to_toml()
    variants = [{}, {"name": "uiface"}, {"name": "uiface", "mse_threshold": 0.01}, {"name": "uiface", "stage_threshold": 600},
                {"name": "ddpm"}, {"negative": "far"}, {"negative": "close"}, {"negative": "mid"},
                {"negative": "far", "negative_scale": 1.0}, {"negative": "far", "adaptive_negative": True},
                {"name": "ddpm", "negative": "far"}]
    prints = {}
    for sampler in variants:
        recipe = parse_recipe({**base, "generation": {**base["generation"], "sampler": sampler}})
        text = recipe.to_toml()
        again = parse_recipe(tomllib.loads(text))  # written out (every field) and read back: the same recipe
        assert again == recipe and again.fingerprint() == recipe.fingerprint()
        prints[str(sampler)] = recipe.fingerprint()
    assert len(set(prints.values()) | {unset.fingerprint()}) == len(variants) + 1, prints
    # A [generation.sampler] table in a file and --set overrides are the same recipe.
    explicit = parse_recipe({**base, "generation": {**base["generation"], "sampler": {"name": "uiface"}}})
    written = tomllib.loads('name = "fp"\nseed = 3\n[identities]\ncount = 10\n[generation]\nmodel = "idiff-uiface-casia"\n'
                            '[generation.sampler]\nname = "uiface"\nmse_threshold = 0.006\n')
    assert parse_recipe(written) == explicit
    from_set = load_recipe(PIPELINES / "smoke.toml", ["generation.sampler.negative=close",
                                                     "generation.sampler.negative_scale=1.5"])
    assert (from_set.generation.sampler.name, from_set.generation.sampler.negative,
            from_set.generation.sampler.negative_scale) == ("cfg", "close", 1.5)
    assert SamplerConfig().settings() == {"name": "cfg", "mse_threshold": 0.006, "stage_threshold": 500, "negative": None,
                                          "negative_scale": 0.5, "adaptive_negative": False}


def test_sampler_choices_are_the_owners():
    """The negative kinds are synthface.identity.negatives' choices; the sampler names are the IDiff-Face
    pipeline's SAMPLERS, checked by its family (tests/generators/idiff/test_family.py)."""
    import typing

    from synthface.identity.negatives import KINDS
    from synthface.recipe import SamplerConfig

    negative = SamplerConfig.model_fields["negative"].annotation
    assert set(typing.get_args(typing.get_args(negative)[0])) <= set(KINDS)
    for field, paper in (("name", "IDperturb"), ("mse_threshold", "UIFace"), ("stage_threshold", "UIFace"),
                         ("negative", "NegFaceDiff"), ("negative_scale", "NegFaceDiff"), ("adaptive_negative", "AdaptDiff")):
        assert paper in SamplerConfig.model_fields[field].description


def test_the_idiff_recipes_are_the_published_procedures_at_the_standard_size():
    from synthface.generators import family_for, model_licence

    recipes = {name: load_recipe(PIPELINES / f"{name}.toml") for name in ("idperturb10k", "uiface10k", "negfacediff10k")}
    for recipe in recipes.values():
        assert (recipe.identities.count, recipe.variation.images_per_identity) == (10_000, 50)
        assert family_for(recipe.generation.model).name == "idiff" and model_licence(recipe.generation.model).restricted
    idperturb, uiface, negfacediff = recipes.values()
    # IDperturb: plain CFG (cfg_scale 1 = guidance 2), 50 DDIM steps, the bounded perturbation at floor 0.4
    assert idperturb.generation.sampler is None and (idperturb.generation.steps, idperturb.generation.guidance) == (50, 2.0)
    assert idperturb.variation.perturbation == "bounded" and idperturb.variation.bounded.floor == 0.4
    # UIFace: the two stages with its published thresholds, no perturbation
    assert (uiface.generation.sampler.name, uiface.generation.sampler.mse_threshold,
            uiface.generation.sampler.stage_threshold) == ("uiface", 0.006, 500)
    assert uiface.variation.perturbation == {1.0: 1.0}
    # NegFaceDiff: DDPM with Far-Neg at w 0.5
    sampler = negfacediff.generation.sampler
    assert (sampler.name, sampler.negative, sampler.negative_scale) == ("ddpm", "far", 0.5)


@pytest.mark.parametrize("name", ["idperturb10k", "uiface10k"])
def test_the_idiff_recipes_run_on_the_tiny_model(name, tmp_path):
    from synthface import engine

    overrides = ["identities.count=2", "variation.images_per_identity=2", "variation.overgenerate=1.0",
                 "generation.model=idiff-tiny", "generation.steps=2", "generation.device=cpu",
                 "filtering.enabled=false", "export.formats=['imagefolder']", "filtering.min_images=1"]
    summary = engine.run(load_recipe(PIPELINES / f"{name}.toml", overrides), tmp_path / "run")
    assert summary.finalized and len(list((tmp_path / "run" / "export" / "imagefolder").rglob("*.jpg"))) == 4
