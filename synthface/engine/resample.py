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

The same rounds resample, besides colliding identities: inconsistent ones (filtering.attribute_consistency
with on_attribute_drift = "resample": more than max_drift_share of their images drifted) and, with
identities.balance, the surplus of over-full gender or age bins (`to_resample`); finalize drops those still
inconsistent and fails with BalanceError when a bin is still off its target.
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

    filt = recipe.filtering
    units: list[int | str] = list(range(num_shards(recipe)))
    rows, embeddings = read_units(layout, units)
    judging = filt.enabled and embeddings.shape[1] > 0
    vectors, replaced = bank.vectors, {}
    for round_ in range(1, filt.max_rounds + 1) if judging and resamples(recipe) else ():
        collided = to_resample(recipe, rows, embeddings)
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


def resamples(recipe: Recipe) -> bool:
    """Whether the recipe resamples identities: colliding ones (collision_policy "resample"), inconsistent
    ones (attribute_consistency with on_attribute_drift "resample") or unbalanced ones (identities.balance)."""
    filt = recipe.filtering
    return (filt.collision_policy == "resample" or recipe.identities.balance is not None
            or (filt.attribute_consistency and filt.on_attribute_drift == "resample"))


def to_resample(recipe: Recipe, rows: list[dict], embeddings: np.ndarray) -> np.ndarray:
    """The identities (ascending labels) the next round gives fresh vectors: the losers of collisions
    (collision_policy "resample"), the inconsistent ones (on_attribute_drift "resample"), and with
    identities.balance the surplus of over-full bins among the identities that would be kept
    (`synthface.filtering.attributes.balance_surplus`)."""
    from synthface import filtering

    filt = recipe.filtering
    identity = np.array([r["identity"] for r in rows], dtype=np.int64)
    reason = np.array([r["drop_reason"] for r in rows], dtype=object)
    kept = np.array([r["kept"] for r in rows], dtype=bool)
    collided = filtering.judge_identities(
        identity, embeddings, kept, reason, collision_cos=filt.collision_cos, collision_policy="resample",
        drop_too_few=False,
    ).collided
    parts = [collided] if filt.collision_policy == "resample" else []
    lost = set(collided.tolist()) if filt.collision_policy != "flag" else set()
    if filt.attribute_consistency and filt.on_attribute_drift != "keep":
        from synthface.filtering.attributes import inconsistent_identities

        inconsistent = inconsistent_identities(identity, reason, filt.max_drift_share)
        if filt.on_attribute_drift == "resample":
            parts.append(inconsistent)
        lost |= set(inconsistent.tolist())
    if recipe.identities.balance is not None:
        parts.append(_unbalanced(recipe, rows, identity, kept & ~np.isin(identity, sorted(lost))))
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts)).astype(np.int64)


def _unbalanced(recipe: Recipe, rows: list[dict], identity: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """identities.balance's surplus among the identities keeping enough images in `kept`."""
    from synthface.filtering.attributes import balance_surplus, identity_attributes

    summary = identity_attributes(identity, [r.get("age") for r in rows], [r.get("gender") or "" for r in rows],
                                  [r.get("gender_confidence") for r in rows], kept)
    alive = np.bincount(np.searchsorted(summary.labels, identity[kept]), minlength=summary.labels.size)
    enough = alive >= (recipe.filtering.min_images if recipe.filtering.on_too_few != "keep" else 1)
    return balance_surplus(summary, enough, *balance_targets(recipe))


def balance_targets(recipe: Recipe) -> tuple[dict, float, dict]:
    """identities.balance as `balance_report`'s (targets, tolerance, age bin edges)."""
    from synthface.recipe import age_bin_edges

    balance = recipe.identities.balance
    targets = balance.marginals()
    edges = {name: age_bin_edges(name) for name in targets.get("age", {})}
    return targets, balance.tolerance, edges


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
