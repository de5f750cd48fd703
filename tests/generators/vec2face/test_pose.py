"""Pose control in recipes: `variation.pose` gives every image a target (yaw, pitch) drawn from its own
seed, carried to Vec2Face+'s pose model and written to the manifest; runs are the same whatever the
batch size, sharding or interruptions; generators without pose control are refused before any work.
Random weights (vec2face-plus-tiny): these prove the plumbing, never that faces follow the pose."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from synthface import engine
from synthface.errors import InvalidInputError, RunInterruptedError
from synthface.recipe import load_recipe
from tests.helpers.engine import tree_digest
from tests.helpers.spies import SpyPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

POSE = ["generation.model='vec2face-plus-tiny'", "variation.pose={ yaw = [-50.0, 40.0], pitch = [-10.0, 15.0] }",
        "export.formats=['imagefolder']", "export.keep_full_images=true"]


def full_image(out, row):
    """The lossless full image beside a kept crop (export.keep_full_images)."""
    return out / row["path"].replace(".jpg", ".png").replace("/images/", "/full/")


@pytest.fixture(scope="module")
def pose_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pose") / "run"
    recipe = load_recipe("smoke", POSE)
    renderer = engine.build_renderer(recipe, engine.Ranks())
    spy = SpyPipeline(renderer.pipeline)
    engine.run(recipe, out, renderer=dataclasses.replace(renderer, pipeline=spy))
    return out, recipe, renderer, spy


def test_every_image_gets_its_own_seeded_pose_and_the_manifest_records_it(pose_run):
    out, recipe, _, _ = pose_run
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 32
    for r in rows:
        assert (r["target_yaw"], r["target_pitch"]) == engine.draw_pose(recipe, r["identity"], r["image"])
        assert -50 <= r["target_yaw"] <= 40 and -10 <= r["target_pitch"] <= 15
    yaws = [r["target_yaw"] for r in rows]
    assert len(set(yaws)) == 32 and min(yaws) < -25 and max(yaws) > 15  # spread over the range, not one value
    assert all(t.pose is None for t in engine.plan_identity(load_recipe("smoke"), 0))


def test_the_poses_reach_the_pipeline_and_the_images_are_its_output_byte_for_byte(pose_run):
    out, recipe, renderer, spy = pose_run
    from synthface.render import image_generators

    rows = {(r["identity"], r["image"]): r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    seen = 0
    for call in spy.calls:
        seeds = [g.initial_seed() for g in call["generator"]]
        batch = [next(r for r in rows.values() if r["seed"] == s) for s in seeds]
        expected = torch.tensor([[r["target_yaw"], r["target_pitch"]] for r in batch], dtype=torch.float32)
        assert torch.equal(call["poses"], expected)
        direct = renderer.pipeline(id_embeds=call["id_embeds"], generator=image_generators(seeds), output_type="pt",
                                   poses=expected.numpy(), rng="per_image").images
        pixels = renderer.family.to_uint8(direct)
        for r, image in zip(batch, pixels):
            assert np.array_equal(np.asarray(Image.open(full_image(out, r))), image), r
            seen += 1
        unposed = renderer.pipeline(id_embeds=call["id_embeds"], generator=image_generators(seeds),
                                    output_type="pt", rng="per_image").images
        assert (direct - unposed).abs().max() > 0.05  # the pose condition changes the images
    assert seen == 32


def test_poses_do_not_depend_on_batch_size_or_sharding(pose_run, tmp_path):
    reference, recipe, renderer, _ = pose_run
    other = load_recipe("smoke", [*POSE, "generation.batch_size=5", "compute.shard_size=4"])
    engine.run(other, tmp_path / "run", renderer=renderer)
    key = ("identity", "image", "seed", "target_cos", "target_yaw", "target_pitch", "kept")
    a, b = (sorted(tuple(r[k] for k in key) for r in pq.read_table(d / "manifest.parquet").to_pylist())
            for d in (reference, tmp_path / "run"))
    assert a == b
    full = [{(r["identity"], r["image"]): np.asarray(Image.open(full_image(d, r)), np.int16)
             for r in pq.read_table(d / "manifest.parquet").to_pylist()} for d in (reference, tmp_path / "run")]
    for key_, image in full[0].items():
        assert np.abs(image - full[1][key_]).max() <= 1, key_  # other batch compositions: GEMM rounding only


def test_an_interrupted_pose_run_resumes_to_identical_files(pose_run, tmp_path):
    reference, recipe, renderer, _ = pose_run
    calls = 0

    def dies_on_the_third_batch(conditions, seeds, poses=None):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt("killed")
        return renderer(conditions, seeds, poses=poses)

    dies_on_the_third_batch.require_poses = renderer.require_poses
    out = tmp_path / "run"
    with pytest.raises(RunInterruptedError, match="rerun to resume"):  # a Ctrl-C leaves the run resumable
        engine.run(recipe, out, renderer=dies_on_the_third_batch)
    summary = engine.run(recipe, out, renderer=renderer)
    assert summary.shards_skipped and summary.shards_run
    assert tree_digest(out) == tree_digest(reference)


def test_a_generator_without_pose_control_is_refused_before_any_work(tmp_path):
    recipe = load_recipe("smoke", [*POSE, "generation.model='vec2face-tiny'"])
    with pytest.raises(InvalidInputError, match="variation.pose.*no pose control.*vec2face-plus-pose"):
        engine.run(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    plain = engine.build_renderer(load_recipe("smoke", ["generation.model='vec2face-tiny'"]), engine.Ranks())
    assert not plain.takes_poses
    with pytest.raises(InvalidInputError, match="no pose control"):
        plain(np.eye(1, 512, dtype=np.float32), [0], poses=np.zeros((1, 2), np.float32))


def test_pose_ranges_are_checked_and_unset_poses_keep_old_fingerprints():
    with pytest.raises(InvalidInputError, match="variation.pose.yaw.*-90 <= least <= largest <= 90"):
        load_recipe("smoke", ["variation.pose={ yaw = [10.0, -10.0] }"])
    with pytest.raises(InvalidInputError, match="variation.pose.pitch"):
        load_recipe("smoke", ["variation.pose={ pitch = [-95.0, 0.0] }"])
    smoke = load_recipe("smoke")
    assert smoke.variation.pose is None
    assert smoke.fingerprint() == "9510f151679a89ce"  # as before variation.pose existed
    posed = load_recipe("smoke", ["variation.pose={}"])
    assert (posed.variation.pose.yaw, posed.variation.pose.pitch) == ((-60.0, 60.0), (-20.0, 20.0))
    assert posed.fingerprint() != smoke.fingerprint()


def test_the_shipped_pose_recipe():
    from synthface.generators import family_for
    from synthface.generators.vec2face.family import Vec2FaceFamily
    from synthface.recipe import shipped_recipe

    shipped = shipped_recipe("vec2face-plus-pose")
    recipe = load_recipe(shipped.path)
    assert recipe.generation.model == "vec2face-plus-pose" and isinstance(family_for("vec2face-plus-pose"), Vec2FaceFamily)
    assert (recipe.variation.pose.yaw, recipe.variation.pose.pitch) == ((-60.0, 60.0), (-20.0, 20.0))
    header = shipped.path.read_text().split("\nname")[0]
    for needle in ("Makes:", "Time:", "Weights:", "Licence:", "non-commercial", "target_yaw"):
        assert needle in header, needle
