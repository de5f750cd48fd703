"""variation.perturbation = "bounded" through the engine: each image's cosine drawn from its own seed
above its identity's bisector bound in the bank it is rendered from, whatever the batches, shards or
ranks; a collision-resampling round bounds its replacements against the set as it then stands."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from synthface import engine
from synthface.identity import bounded_cosines, load_bank, lower_bounds, nearest_cosines
from tests.helpers.engine import data_files, noise_renderer, photo_recipe, run_photos, small_recipe

BOUNDED = {"perturbation": "bounded", "bounded": {"floor": 0.5, "max_cos": 0.99}}


def manifest(out) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def test_each_image_s_cosine_comes_from_its_seed_and_its_identity_s_recorded_nearest_cosine(tmp_path):
    recipe = small_recipe(variation=BOUNDED)
    out = tmp_path / "run"
    engine.run(recipe, out, renderer=noise_renderer())
    bank = engine.ensure_identities(recipe, engine.RunLayout(out), engine.Ranks())
    rows = manifest(out)
    assert len(rows) == 21 and np.isfinite([r["target_cos"] for r in rows]).all()
    for r in rows:
        lb = lower_bounds([bank.nearest_cos[r["identity"]]], 0.5)[0]
        assert lb <= r["target_cos"] < 0.99
        assert r["target_cos"] == bounded_cosines([bank.nearest_cos[r["identity"]]], [r["seed"]], floor=0.5,
                                                  max_cos=0.99)[0]
        assert abs(r["condition_cos"] - r["target_cos"]) < 1e-5
    assert len({r["target_cos"] for r in rows}) == 21
    # The plan leaves the cosine to the render (it needs the bank).
    assert all(np.isnan(t.target_cos) for t in engine.plan_identity(recipe, 0))


def test_batches_shards_and_ranks_do_not_change_a_bounded_image(tmp_path):
    recipe = small_recipe(variation=BOUNDED)
    engine.run(recipe, tmp_path / "one", renderer=noise_renderer())
    small_batches = small_recipe(variation=BOUNDED, generation={"batch_size": 2})
    engine.run(small_batches, tmp_path / "batches", renderer=noise_renderer(), max_in_flight=1)
    same = {k: v for k, v in data_files(tmp_path / "batches").items() if k != "recipe.toml"}  # it names the batch size
    assert same == {k: v for k, v in data_files(tmp_path / "one").items() if k != "recipe.toml"}
    layout = engine.prepare_output(recipe, tmp_path / "ranks")  # as the launcher's first rank to start would,
    engine.ensure_identities(recipe, layout, engine.Ranks())     # with rank 0's bank in place
    for r in (1, 0):  # two ranks, rank 1 first
        engine.run(recipe, tmp_path / "ranks", ranks=engine.Ranks(r, 2), renderer=noise_renderer(), wait_seconds=5)
    assert data_files(tmp_path / "ranks") == data_files(tmp_path / "one")

    def by_image(out):
        return {(r["identity"], r["image"]): (r["seed"], r["target_cos"], r["condition_cos"]) for r in manifest(out)}

    other_shards = small_recipe(variation=BOUNDED, compute={"shard_size": 3})  # other units, same images
    engine.run(other_shards, tmp_path / "shards", renderer=noise_renderer())
    assert by_image(tmp_path / "shards") == by_image(tmp_path / "one")
    images = {p.relative_to(tmp_path / "one" / "export"): p.read_bytes()
              for p in (tmp_path / "one" / "export" / "imagefolder").rglob("*.jpg")}
    assert images == {p.relative_to(tmp_path / "shards" / "export"): p.read_bytes()
                      for p in (tmp_path / "shards" / "export" / "imagefolder").rglob("*.jpg")}


def test_a_replaced_identity_is_bounded_by_the_set_with_its_replacement_in_place(tmp_path):
    """The rule for collision resampling: a round's images are bounded by their identity's nearest
    cosine over the vectors as they stand in that round (the replacement in place), computed exactly;
    the shards' images by the sampled bank's recorded cosines."""
    recipe = photo_recipe(collision_policy="resample")
    recipe.variation.perturbation = "bounded"  # bounded keeps each variant nearest its own identity,
    out = tmp_path / "run"                     # so the photo renderer still finds the right person
    summary = run_photos(recipe, out)
    assert summary.stats["identities_replaced"] == 1
    rows = manifest(out)
    sampled = engine.ensure_identities(recipe, engine.RunLayout(out), engine.Ranks())
    final = load_bank(out / "identities.safetensors").vectors  # one round: the set that round rendered from
    now = nearest_cosines(final)
    assert not np.isclose(now[3], sampled.nearest_cos[3])  # the replacement has another nearest cosine
    replaced = [r for r in rows if r["vector_round"] == 1]
    assert {r["identity"] for r in replaced} == {3} and len(replaced) == 3
    for r in rows:
        nearest = now[r["identity"]] if r["vector_round"] == 1 else sampled.nearest_cos[r["identity"]]
        assert r["target_cos"] == bounded_cosines([nearest], [r["seed"]])[0]
    # Every identity keeps its 3 images: each variant was rendered as its own identity's person.
    assert sum(r["kept"] for r in rows) == 12
