"""AttrOP on identity centres as an engine step (identities.attrop): run once on rank 0 within its caps,
statuses saved, the bank's max-cosine guarantee kept, the optimised centres rendered, reused on resume.
Tiny random estimators on vec2face-tiny: plumbing only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors import safe_open

from synthface import engine
from synthface.errors import InvalidInputError
from synthface.identity import load_bank
from synthface.recipe import load_recipe
from tests.test_vec2face_pose import SpyPipeline

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
    sampled = engine._sample_bank(recipe).vectors
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
    monkeypatch.setattr(engine, "_run_attrop", lambda *a: pytest.fail("AttrOP ran again"))
    again = engine.ensure_identities(recipe, engine.RunLayout(out), engine.Ranks(), renderer=renderer)
    assert np.array_equal(again.vectors, bank.vectors)


def test_a_converged_centre_too_close_to_another_is_reverted(monkeypatch, tmp_path):
    recipe = load_recipe("smoke", ATTROP)
    bank = engine._sample_bank(recipe)
    import synthface.pipelines.vec2face_attrop as module

    def lands_on_identity_0(pipe, start, target, estimators, gens, config):
        from synthface.pipelines.vec2face_attrop import AttrOPResult, AttrOPStatus

        vectors = start.clone()
        vectors[1:] = start[0]  # every other centre moves onto identity 0: far above max_cos
        return AttrOPResult(None, vectors * 22, [AttrOPStatus(True, 1, 0, 0.0, 0.0, None)] * len(start))

    monkeypatch.setattr(module, "attrop", lands_on_identity_0)
    renderer = engine.build_renderer(recipe, engine.Ranks())
    vectors, records = engine._run_attrop(recipe, bank, renderer)
    assert [r["status"] for r in records] == ["too_close"] * 8  # in order: each one is checked against the rest
    assert np.array_equal(vectors, bank.vectors)


def test_attrop_needs_a_vec2face_generator(tmp_path):
    recipe = load_recipe("smoke", [*ATTROP, "generation.model='tiny'"])
    with pytest.raises(InvalidInputError, match="identities.attrop.*Vec2Face"):
        engine.run(recipe, tmp_path / "run")
    assert load_recipe("smoke").fingerprint() == "9510f151679a89ce"  # unset: fingerprints as before
