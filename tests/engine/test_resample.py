"""Collision resampling, a stage of its own before finalize: replacement vectors rendered as units of
their own, deterministic across kills and ranks; finalize never renders."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from synthface import engine
from synthface.engine import identities
from synthface.errors import InvalidInputError
from synthface.identity import load_bank
from tests.helpers.engine import COLLISION_COS, data_files, photo_recipe, run_photos


def kept_centres(out) -> dict[int, np.ndarray]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    emb = load_file(str(out / "embeddings.safetensors"))["embeddings"]
    out_ = {}
    for ident in sorted({r["identity"] for r in rows if r["kept"]}):
        e = emb[[i for i, r in enumerate(rows) if r["kept"] and r["identity"] == ident]]
        c = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
        out_[ident] = c / np.linalg.norm(c)
    return out_


def test_resample_replaces_a_collided_identity_deterministically_across_kills_and_ranks(tmp_path):
    recipe = photo_recipe(collision_policy="resample")
    summary = run_photos(recipe, tmp_path / "one")
    out = tmp_path / "one"
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    # Identity 3 collided with 0: its first images are dropped as replaced, new ones come from vector round 1.
    old = [r for r in rows if r["identity"] == 3 and r["vector_round"] == 0]
    new = [r for r in rows if r["identity"] == 3 and r["vector_round"] == 1]
    assert len(old) == 3 and all(r["drop_reason"] == "replaced" for r in old)
    assert sum(r["kept"] for r in new) == 3 and all(r["path"].startswith("shards/resample-01/images/") for r in new)
    assert {r["image"] for r in new}.isdisjoint({r["image"] for r in old})
    assert all(r["vector_round"] == 0 for r in rows if r["identity"] != 3)
    assert summary.stats["identities_kept"] == 4 and summary.stats["identities_replaced"] == 1
    assert summary.stats["collisions"] == 0
    centres = kept_centres(out)
    assert len(centres) == 4
    gram = np.stack(list(centres.values())) @ np.stack(list(centres.values())).T
    assert gram[~np.eye(4, dtype=bool)].max() <= COLLISION_COS
    # identities.safetensors holds the final vectors and says which were replaced, in which round.
    final = load_bank(out / "identities.safetensors")
    sampled = identities._sample_bank(recipe)
    with safe_open(str(out / "identities.safetensors"), "np") as f:
        assert json.loads(f.metadata()[engine.REPLACED_KEY]) == {"3": 1}
    assert np.array_equal(final.vectors[:3], sampled.vectors[:3]) and not np.allclose(final.vectors[3], sampled.vectors[3])
    cos = final.vectors @ final.vectors.T
    assert cos[~np.eye(4, dtype=bool)].max() <= recipe.identities.max_cos

    # Killed while rendering the replacement (the 3rd model call), then resumed: the same files.
    with pytest.raises(RuntimeError, match="killed"):
        run_photos(recipe, tmp_path / "killed", fails_after=2)
    assert not (tmp_path / "killed" / "finalize.done").exists()
    run_photos(recipe, tmp_path / "killed")
    assert data_files(tmp_path / "killed") == data_files(out)

    # Two ranks (rank 1 first, then rank 0, which waits for nothing and finalizes): the same files.
    run_photos(recipe, tmp_path / "two", ranks=engine.Ranks(1, 2))
    assert run_photos(recipe, tmp_path / "two", ranks=engine.Ranks(0, 2)).finalized
    assert data_files(tmp_path / "two") == data_files(out)


def test_finalize_never_renders_a_resampling_round(tmp_path):
    recipe = photo_recipe(collision_policy="resample")
    out = tmp_path / "run"
    run_photos(recipe, out)
    layout = engine.RunLayout(out)
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    layout.final_done.unlink()
    # With its round done, finalize replays it from the files (no worker, no renderer) and writes the same set.
    before = data_files(out)
    engine.finalize(recipe, layout, bank)
    assert data_files(out) == before
    # Without it, finalize refuses rather than render: rendering is resample_collisions' job.
    layout.done_marker(engine.resample_unit(1)).unlink()
    with pytest.raises(InvalidInputError, match="resample-01 is not rendered yet"):
        engine.finalize(recipe, layout, bank)
