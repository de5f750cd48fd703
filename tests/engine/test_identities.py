"""AttrOP on identity centres as an engine step (identities.attrop): run once on rank 0 within its caps,
statuses saved, the bank's max-cosine guarantee kept, the optimised centres rendered, reused on resume.
Tiny random estimators on vec2face-tiny: plumbing only."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from synthface import engine, weights
from synthface.engine import identities
from synthface.errors import InvalidInputError, ModelNotFoundError
from synthface.identity import load_bank
from synthface.recipe import load_recipe
from tests.helpers.spies import SpyPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

ATTROP = ["generation.model='vec2face-tiny'", "identities.attrop={ estimators = 'tiny', max_steps = 2, "
          "max_retries = 1, quality_target = 0.0 }", "export.formats=['imagefolder']"]


def statuses(out):
    with safe_open(str(out / "attrop.safetensors"), "numpy") as handle:
        return json.loads(handle.metadata()["status"])


def test_attrop_runs_within_its_caps_keeps_the_guarantee_and_is_rendered(tmp_path, monkeypatch):
    recipe = load_recipe("smoke", [*ATTROP, "identities.max_cos=0.5"])
    renderer = engine.build_renderer(recipe, engine.Ranks())
    spy = SpyPipeline(renderer.pipeline)
    engine.run(recipe, tmp_path / "run", renderer=dataclasses.replace(renderer, pipeline=spy))
    out = tmp_path / "run"
    records = statuses(out)
    assert len(records) == 8 and all(r["status"] in engine.ATTROP_STATUSES for r in records)
    assert all(1 <= r["steps"] <= 2 * 2 and r["retries"] <= 1 for r in records)  # max_steps * (max_retries + 1)
    sampled = identities._sample_bank(recipe).vectors
    bank = load_bank(out / "identities.safetensors")
    counts = json.loads(bank.metadata[engine.ATTROP_KEY])
    assert sum(counts.values()) == 8 and counts == {s: sum(r["status"] == s for r in records)
                                                    for s in engine.ATTROP_STATUSES}
    moved = ~np.all(bank.vectors == sampled, axis=1)
    assert moved.tolist() == [r["status"] == "converged" for r in records]  # unconverged keep the sampled centre
    sims = bank.vectors @ bank.vectors.T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= 0.5 + 1e-6 and np.allclose(np.linalg.norm(bank.vectors, axis=1), 1, atol=1e-5)
    first = spy.calls[0]["id_embeds"].numpy()[:4]  # identity 0's candidates: half at the centre itself (cos 1.0)
    assert np.isclose(first @ bank.vectors[0], 1.0, atol=1e-5).any()
    # Killed after AttrOP saved its centres, before the bank was written: the rerun reuses them.
    (out / "identities.safetensors").unlink()
    monkeypatch.setattr(identities, "_run_attrop", lambda *a: pytest.fail("AttrOP ran again"))
    again = engine.ensure_identities(recipe, engine.RunLayout(out), engine.Ranks(), renderer=renderer)
    assert np.array_equal(again.vectors, bank.vectors)


def test_a_converged_centre_too_close_to_another_is_reverted(monkeypatch, tmp_path):
    recipe = load_recipe("smoke", ATTROP)
    bank = identities._sample_bank(recipe)
    import synthface.generators.vec2face.attrop as module

    def lands_on_identity_0(pipe, start, target, estimators, gens, config, yaw_target=None):
        from synthface.generators.vec2face.attrop import AttrOPResult, AttrOPStatus

        vectors = start.clone()
        vectors[1:] = start[0]  # every other centre moves onto identity 0: far above max_cos
        return AttrOPResult(None, vectors * 22, [AttrOPStatus(True, 1, 0, 0.0, 0.0, None)] * len(start))

    monkeypatch.setattr(module, "attrop", lands_on_identity_0)
    renderer = engine.build_renderer(recipe, engine.Ranks())
    vectors, records = identities._run_attrop(recipe, bank, renderer)
    assert [r["status"] for r in records] == ["too_close"] * 8  # in order: each one is checked against the rest
    assert np.array_equal(vectors, bank.vectors)


def test_attrop_needs_a_generator_that_declares_it(tmp_path):
    recipe = load_recipe("smoke", [*ATTROP, "generation.model='tiny'"])
    with pytest.raises(InvalidInputError, match="identities.attrop.*declares AttrOP.*'tiny' does not.*'vec2face'"):
        engine.run(recipe, tmp_path / "run")
    assert load_recipe("smoke").fingerprint() == "9510f151679a89ce"  # unset: fingerprints as before


# --------------------------------------------------------------------------- estimators from the registry

COMMIT = "0123456789abcdef0123456789abcdef01234567"
#: Registry estimators on vec2face-tiny: 2 identities, one Adam step each (plumbing, not convergence).
REGISTRY = ["generation.model='vec2face-tiny'", "identities.count=2", "export.formats=['imagefolder']",
            "identities.attrop={ estimators = 'vec2face', max_steps = 1, max_retries = 0 }"]


def fake_hub(cache: Path, files: dict[str, dict]) -> Path:
    """State dicts saved as the Hugging Face cache lays out a download of BooBooWu/Vec2Face, where
    synthface.weights.find looks for the registry's vec2face-* files (HF_HUB_CACHE)."""
    import torch

    root = cache / "models--BooBooWu--Vec2Face"
    for name, state in files.items():
        (file,) = weights.spec(name).files
        path = root / "snapshots" / COMMIT / file
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture(scope="module")
def hubs(tmp_path_factory):
    """Two fake caches: random-weight iresnets (narrow, arcface_torch names) only, and with 6DRepNet."""
    import torch

    from synthface.fr.backbones import iresnet
    from synthface.generators.vec2face.pose import SixDRepNet

    torch.manual_seed(0)
    small = iresnet("r18", widths=(16, 16, 32, 32)).eval().state_dict()
    judges = {"vec2face-arcface": small, "vec2face-magface": small}
    no_pose = fake_hub(tmp_path_factory.mktemp("hub-no-pose"), judges)
    pose = fake_hub(tmp_path_factory.mktemp("hub-pose"), {**judges, "vec2face-6drepnet": SixDRepNet().state_dict()})
    return {"no_pose": no_pose, "pose": pose, "empty": tmp_path_factory.mktemp("hub-empty")}


@pytest.fixture
def registry_calls(monkeypatch):
    """Every AttrOPEstimators.from_registry call's keyword arguments (the call itself goes through)."""
    from synthface.generators.vec2face.attrop import AttrOPEstimators

    calls, real = [], AttrOPEstimators.from_registry.__func__

    def spy(cls, **kwargs):
        calls.append(kwargs)
        return real(cls, **kwargs)

    monkeypatch.setattr(AttrOPEstimators, "from_registry", classmethod(spy))
    monkeypatch.delenv(weights.PICKLE_ENV, raising=False)
    return calls


def centres(recipe, tmp_path):
    tmp_path.mkdir()
    renderer = engine.build_renderer(recipe, engine.Ranks())
    engine.attrop_centres(recipe, engine.RunLayout(tmp_path), identities._sample_bank(recipe), renderer)
    return statuses(tmp_path)


def test_vec2face_estimators_load_through_the_registry_on_the_pickle_opt_in(hubs, registry_calls, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hubs["pose"]))
    recipe = load_recipe("smoke", REGISTRY)
    with pytest.raises(ModelNotFoundError, match="generation.allow_pickle = true.*") as refused:
        centres(recipe, tmp_path / "refused")
    assert weights.PICKLE_ENV in str(refused.value) and not (tmp_path / "refused" / "attrop.safetensors").exists()
    records = centres(load_recipe("smoke", [*REGISTRY, "generation.allow_pickle=true"]), tmp_path / "recipe")
    assert len(records) == 2 and all(r["steps"] == 1 and r["pose_error"] is None for r in records)
    monkeypatch.setenv(weights.PICKLE_ENV, "1")  # the environment's opt-in counts as the recipe's does
    assert len(centres(recipe, tmp_path / "env")) == 2
    # No yaw target: 6DRepNet is never loaded, though installed; the recipe's opt-in is passed on.
    assert [(c["pose"], c["allow_pickle"]) for c in registry_calls] == [(False, None), (False, True), (False, None)]


def test_a_missing_estimator_names_its_download(hubs, registry_calls, tmp_path, monkeypatch):
    recipe = load_recipe("smoke", [*REGISTRY, "generation.allow_pickle=true"])
    monkeypatch.setenv("HF_HUB_CACHE", str(hubs["empty"]))
    with pytest.raises(ModelNotFoundError, match="synthface models download vec2face-arcface"):
        centres(recipe, tmp_path / "a")
    monkeypatch.setenv("HF_HUB_CACHE", str(hubs["no_pose"]))
    with pytest.raises(ModelNotFoundError, match="synthface models download vec2face-6drepnet"):
        centres(load_recipe("smoke", [*REGISTRY, "generation.allow_pickle=true", "identities.attrop.yaw_target=30.0"]),
                tmp_path / "b")


def test_a_yaw_target_is_judged_by_6drepnet_and_recorded(hubs, registry_calls, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hubs["pose"]))
    recipe = load_recipe("smoke", [*REGISTRY, "generation.allow_pickle=true", "identities.attrop.yaw_target=30.0",
                                   "identities.attrop.max_pose_error=90.0"])
    records = centres(recipe, tmp_path / "run")
    assert [c["pose"] for c in registry_calls] == [True]
    assert len(records) == 2 and all(math.isfinite(r["pose_error"]) and 0 <= r["pose_error"] <= 120 for r in records)
    for r in records:  # the recipe's max_pose_error reached the check (90: the pose never blocks convergence)
        assert (r["status"] != "not_converged") == (r["identity_loss"] <= 0.3 and 27.0 - r["quality"] <= 1.0)


def test_a_yaw_target_needs_a_yaw_judge_and_fingerprints_stay():
    with pytest.raises(InvalidInputError, match="yaw_target needs a yaw judge.*estimators = 'vec2face'"):
        load_recipe("smoke", [*ATTROP, "identities.attrop.yaw_target=30.0"])
    with pytest.raises(InvalidInputError, match="yaw judge"):
        engine.attrop_estimators("tiny", "cpu", 512, pose=True)
    with pytest.raises(InvalidInputError, match="max_pose_error applies only with yaw_target"):
        load_recipe("smoke", [*ATTROP, "identities.attrop.max_pose_error=3.0"])
    with pytest.raises(InvalidInputError, match="yaw_target"):
        load_recipe("smoke", [*REGISTRY, "identities.attrop.yaw_target=95.0"])
    # Recipes with AttrOP but no yaw target fingerprint as before the field existed (values of the earlier code).
    assert load_recipe("hsface10k-vec2face").fingerprint() == "882fc485c118405e"
    with_yaw = load_recipe("hsface10k-vec2face", ["identities.attrop.yaw_target=30.0"])
    assert with_yaw.fingerprint() not in ("882fc485c118405e", load_recipe(
        "hsface10k-vec2face", ["identities.attrop.yaw_target=45.0"]).fingerprint())


# --------------------------------------------------------------------------- the loss weights and checks

#: identities.attrop fields that are AttrOPConfig fields of the same name and meaning.
CONFIG_FIELDS = ("lr", "max_steps", "max_retries", "quality_target", "max_identity_loss", "max_quality_gap",
                 "max_pose_error", "identity_weight", "quality_scale", "pose_scale")


def captured_config(monkeypatch, overrides):
    """The AttrOPConfig and yaw targets the engine passes for `smoke` with `overrides` (attrop and its
    judges replaced: nothing is optimised or loaded)."""
    import synthface.generators.vec2face.attrop as module
    from synthface.generators.vec2face.attrop import AttrOPEstimators, AttrOPResult, AttrOPStatus

    seen = []

    def capture(pipe, start, target, estimators, gens, config, yaw_target=None):
        seen.append((config, yaw_target))
        return AttrOPResult(None, start.clone() * 22, [AttrOPStatus(False, 1, 0, 1.0, 0.0, None)] * len(start))

    monkeypatch.setattr(module, "attrop", capture)
    monkeypatch.setattr(identities, "attrop_estimators", lambda *a, **k: AttrOPEstimators(None, None, None))
    recipe = load_recipe("smoke", ["generation.model='vec2face-tiny'", "identities.count=2", *overrides])
    identities._run_attrop(recipe, identities._sample_bank(recipe), engine.build_renderer(recipe, engine.Ranks()))
    return seen


def test_the_loss_weights_and_checks_reach_attrop_config(monkeypatch):
    from synthface.generators.vec2face.attrop import AttrOPConfig
    from synthface.recipe import AttrOPSettings

    # Unset, every field is AttrOPConfig's own default (Vec2Face's).
    defaults = AttrOPConfig()
    assert {n: AttrOPSettings.model_fields[n].default for n in CONFIG_FIELDS} == {
        n: getattr(defaults, n) for n in CONFIG_FIELDS}
    ((config, yaw),) = captured_config(monkeypatch, ["identities.attrop={ estimators = 'tiny' }"])
    assert config == defaults and yaw is None
    # Vec2Face+'s published values (the scales multiply: quality / 30, yaw / 90) and every check.
    plus = ("identities.attrop={ estimators = 'vec2face', lr = 0.05, max_steps = 4, max_retries = 2, "
            "quality_target = 24.0, quality_scale = 0.03333333333333333, yaw_target = 30.0, "
            "pose_scale = 0.011111111111111112, identity_weight = 50.0, max_identity_loss = 0.4, "
            "max_quality_gap = 2.0, max_pose_error = 7.0 }")
    ((config, yaw),) = captured_config(monkeypatch, [plus])
    assert config == AttrOPConfig(lr=0.05, max_steps=4, max_retries=2, quality_target=24.0, quality_scale=1 / 30,
                                  pose_scale=1 / 90, identity_weight=50.0, max_identity_loss=0.4,
                                  max_quality_gap=2.0, max_pose_error=7.0)
    assert yaw.tolist() == [30.0, 30.0]


@pytest.mark.parametrize("field, value, fragment", [
    ("identity_weight", "-1.0", "greater than or equal to 0"),
    ("identity_weight", "2e4", "less than or equal to 10000"),
    ("quality_scale", "-0.5", "greater than or equal to 0"),
    ("max_identity_loss", "0.0", "greater than 0"),
    ("max_identity_loss", "2.5", "less than or equal to 2"),
    ("max_quality_gap", "-1.0", "greater than or equal to 0"),
    ("max_quality_gap", "true", ""),
])
def test_out_of_range_loss_settings_are_refused_naming_the_field(field, value, fragment):
    with pytest.raises(InvalidInputError, match=f"identities.attrop.{field} must") as info:
        load_recipe("smoke", [*ATTROP, f"identities.attrop.{field}={value}"])
    assert fragment in str(info.value)


def test_pose_scale_needs_a_yaw_target_and_a_range():
    with pytest.raises(InvalidInputError, match="pose_scale applies only with yaw_target"):
        load_recipe("smoke", [*ATTROP, "identities.attrop.pose_scale=0.5"])
    with pytest.raises(InvalidInputError, match="identities.attrop.pose_scale must be greater than or equal to 0"):
        load_recipe("smoke", [*REGISTRY, "identities.attrop.yaw_target=30.0", "identities.attrop.pose_scale=-1.0"])
    posed = load_recipe("smoke", [*REGISTRY, "identities.attrop.yaw_target=30.0", "identities.attrop.pose_scale=0.5"])
    assert posed.identities.attrop.pose_scale == 0.5


def test_loss_settings_leave_fingerprints_alone_at_their_defaults():
    import tomllib

    # Values of the code before the loss settings existed.
    pinned = {("hsface10k-vec2face",): "882fc485c118405e", ("vec2face-plus-pose",): "8ddfb52c9b0bb7c9",
              ("smoke", *ATTROP): "4d7919a41037aeba", ("smoke",): "9510f151679a89ce"}
    for (name, *overrides), value in pinned.items():
        recipe = load_recipe(name, overrides)
        assert recipe.fingerprint() == value, name
    # Written out explicitly at their defaults (to_toml writes every field), they still leave it alone.
    smoke = load_recipe("smoke", ATTROP)
    explicit = tomllib.loads(smoke.to_toml())
    assert explicit["identities"]["attrop"]["identity_weight"] == 100.0
    from synthface.recipe import parse_recipe

    assert parse_recipe(explicit).fingerprint() == "4d7919a41037aeba"
    changed = {load_recipe("smoke", [*ATTROP, f"identities.attrop.{k}={v}"]).fingerprint()
               for k, v in (("identity_weight", 50.0), ("quality_scale", 0.5), ("max_identity_loss", 0.2),
                            ("max_quality_gap", 2.0))}
    assert len(changed) == 4 and "4d7919a41037aeba" not in changed


def test_the_vec2face_plus_example_is_a_valid_setting():
    """vec2face-plus-pose.toml's commented AttrOP line loads, and means Vec2Face+'s published loss."""
    import tomllib

    text = (Path(__file__).parents[2] / "pipelines" / "vec2face-plus-pose.toml").read_text()
    (line,) = [ln[2:] for ln in text.splitlines() if ln.startswith("# attrop = {")]
    example = tomllib.loads(line)["attrop"]
    recipe = load_recipe("vec2face-plus-pose", [f"identities.{line.replace(' = ', '=', 1)}"])
    attrop = recipe.identities.attrop
    assert attrop.model_dump(include=set(example)) == example
    assert (attrop.quality_target, attrop.quality_scale, attrop.pose_scale) == (24.0, 1 / 30, 1 / 90)
    assert load_recipe("vec2face-plus-pose").identities.attrop is None  # the active values are unchanged
