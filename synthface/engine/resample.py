"""Collision resampling, a stage of its own between the shards and finalize.

With filtering.collision_policy = "resample", the losing identity of each colliding pair gets a fresh
vector (`draw_replacements`: from the bank's prior, keeping the bank's max cosine and exclusion margin
against every other identity, kept or replaced), rendered by a `ShardWorker` as unit
`resample_unit(r)` with derived seeds and the same per-image filter; then the whole set is judged
again, for up to filtering.max_rounds rounds (identities still colliding are dropped at finalize as
"collision"). Images of a replaced vector are dropped as "replaced"; the manifest's `vector_round`
says which vector each image came from. Under bounded perturbation a round's images are bounded by
their identity's nearest cosine over the set as it stands in that round (replacements in place),
computed exactly (`ShardWorker.run_units`). Each round is a unit with its own done marker, and its
vectors depend only on the seeds and the set, so any kill and rerun, with any number of ranks,
gives the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from synthface.engine.plan import num_shards
from synthface.errors import InvalidInputError
from synthface.identity.bank import IdentityBank, load_vectors
from synthface.identity.replace import draw_replacements
from synthface.recipe import Recipe
from synthface.runfolder import RunLayout, resample_unit

log = logging.getLogger("synthface.engine")


@dataclass
class Resampled:
    """What the shards and the resampling rounds made, ready for finalize: every candidate's manifest
    row (in unit order; images of replaced vectors already dropped as "replaced") and filter-space
    embedding, the final vectors, {identity: round its vector was replaced in}, and the units read."""

    rows: list[dict]
    embeddings: np.ndarray
    vectors: np.ndarray
    units: list[int | str]
    replaced: dict[int, int] = field(default_factory=dict)
    judging: bool = False  # identity verdicts apply: filtering on, and the units carry embeddings


def resample_collisions(recipe: Recipe, layout: RunLayout, bank: IdentityBank, *, worker: Callable | None = None
                        ) -> Resampled:
    """Read the finished shards and run the collision-resampling rounds the recipe asks for (see the
    module docstring); `worker()` gives the `ShardWorker` that renders a round not yet done (None: every
    round needed must already be done, else InvalidInputError). Without collision_policy "resample"
    this only reads the shards."""
    from synthface import filtering

    filt = recipe.filtering
    units: list[int | str] = list(range(num_shards(recipe)))
    rows, embeddings = read_units(layout, units)
    judging = filt.enabled and embeddings.shape[1] > 0
    vectors, replaced = bank.vectors, {}
    for round_ in range(1, filt.max_rounds + 1) if judging and filt.collision_policy == "resample" else ():
        collided = filtering.judge_identities(
            [r["identity"] for r in rows], embeddings, [r["kept"] for r in rows], [r["drop_reason"] for r in rows],
            collision_cos=filt.collision_cos, collision_policy="resample", drop_too_few=False,
        ).collided
        if not collided.size:
            break
        vectors = vectors.copy()
        vectors[collided] = draw_replacements(
            vectors, collided, prior=bank.prior, max_cos=recipe.identities.max_cos, seed=recipe.identities.seed,
            round_=round_, exclude=load_vectors(recipe.identities.exclude) if recipe.identities.exclude else None,
            exclude_max_cos=recipe.identities.exclude_max_cos,
        )
        unit = resample_unit(round_)
        if not layout.is_done(unit):
            if worker is None:
                raise InvalidInputError(f"{unit} is not rendered yet: resampling needs a worker to render it "
                                        "(collision_policy = 'resample').")
            result = worker().run_unit(unit, collided.tolist(), vectors, round_)
            log.info("%s: %d identities replaced, %d candidates, %d kept", unit, collided.size, result.candidates,
                     result.kept)
        lost = set(collided.tolist())
        for r in rows:
            if r["kept"] and r["identity"] in lost:
                r["kept"], r["drop_reason"] = False, "replaced"
        new_rows, new_embeddings = read_units(layout, [unit])
        rows, embeddings = rows + new_rows, np.concatenate([embeddings, new_embeddings])
        units.append(unit)
        replaced.update(dict.fromkeys(lost, round_))
    return Resampled(rows, embeddings, vectors, units, replaced, judging)


def resample_units_done(recipe: Recipe, layout: RunLayout) -> list[str]:
    """The resampling rounds whose done marker exists (whole or not)."""
    return [u for u in map(resample_unit, range(1, recipe.filtering.max_rounds + 1)) if layout.done_marker(u).exists()]


def read_units(layout: RunLayout, units: Sequence[int | str]) -> tuple[list[dict], np.ndarray]:
    """The manifest rows and embeddings of finished units, in unit order."""
    from safetensors.numpy import load_file

    from synthface.export import concat_manifests

    table = concat_manifests([layout.unit_dir(u) / layout.MANIFEST for u in units])
    parts = [load_file(str(layout.unit_dir(u) / layout.EMBEDDINGS))["embeddings"] for u in units]
    return table.to_pylist(), np.concatenate(parts)
