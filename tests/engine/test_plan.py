"""The plan: seeds, target cosines and poses derived from the recipe alone; what a run will do."""

from __future__ import annotations

import json

import pytest

from synthface.engine import make_plan, plan_identity, run
from synthface.runfolder import RunLayout
from synthface.seeds import derive_seed
from tests.helpers.engine import noise_renderer, small_recipe


def test_seeds_depend_only_on_recipe_seed_identity_and_image():
    recipe = small_recipe()
    a = plan_identity(recipe, 5)
    assert [t.image for t in a] == [0, 1, 2]
    assert a[1].seed == derive_seed(3, 5, 1)
    assert len({t.seed for i in range(7) for t in plan_identity(recipe, i)}) == 21
    other = small_recipe(compute={"shard_size": 5})
    assert plan_identity(other, 5) == a
    assert sorted(t.target_cos for t in a) in ([0.9, 1.0, 1.0], [0.9, 0.9, 1.0])


def test_the_plan_s_time_left_comes_from_the_wall_time_rate(tmp_path):
    """#22 class 12: shards overlap, so their own seconds add up to more than the run took; the plan
    takes each rank's images per second over its session's wall time."""
    recipe = small_recipe()
    out = tmp_path / "run"
    run(recipe, out, renderer=noise_renderer())
    layout = RunLayout(out)
    speed = json.loads(layout.stage_record(0).read_text())["images_per_s"]
    plan = make_plan(recipe, out)
    assert plan.seconds_per_candidate == pytest.approx(1 / speed)
    layout.stage_record(0).unlink()  # a run from before the stage records: the shards' own seconds
    records = [layout.record(s) for s in range(4)]
    assert make_plan(recipe, out).seconds_per_candidate == pytest.approx(
        sum(r["seconds"] for r in records) / sum(r["candidates"] for r in records))
