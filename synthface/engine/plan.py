"""The plan: which images a run renders (`plan_identity`: seeds, target cosines, poses), the shards of
identities, and what a run will do (`make_plan`). Everything here is derived from the recipe alone
(so a bounded perturbation's cosines, which need the bank, are drawn by the worker when it renders)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.identity.perturb import mixture_cosines
from synthface.recipe import Recipe
from synthface.runfolder import RunLayout, shard_unit
from synthface.seeds import IMAGE_MIXTURE_STREAM, POSE_STREAM, derive_seed


@dataclass(frozen=True)
class ImageTask:
    """One candidate image (`target_cos`: NaN until rendered under bounded perturbation). `round` counts the identity's rendering rounds over all its vectors;
    `vector_round` says which vector it is rendered from (0: the sampled one, r: the replacement
    drawn in collision-resampling round r); `pose`: the target (yaw, pitch) in degrees when the recipe
    asks for poses (`variation.pose`), else None; `negative`: with generation.sampler.negative, the
    identity whose vector it was steered away from (NegFaceDiff), set when it is rendered (the choice
    needs the bank, `ShardWorker`), else None."""

    identity: int
    image: int
    round: int
    seed: int
    target_cos: float
    vector_round: int = 0
    pose: tuple[float, float] | None = None
    negative: int | None = None




def draw_pose(recipe: Recipe, identity: int, image: int) -> tuple[float, float] | None:
    """The target (yaw, pitch) of one image, uniform in `variation.pose`'s ranges, from
    derive_seed(recipe seed, identity, image, POSE_STREAM) alone; None when the recipe sets no poses."""
    pose = recipe.variation.pose
    if pose is None:
        return None
    rng = np.random.default_rng(derive_seed(recipe.seed, identity, image, POSE_STREAM))
    return float(rng.uniform(*pose.yaw)), float(rng.uniform(*pose.pitch))


def plan_identity(recipe: Recipe, identity: int, round_: int = 0, vector_round: int = 0) -> list[ImageTask]:
    """The candidate images of one identity in one rendering round of one of its vectors.

    Target cosines come from the recipe's {cosine = share} mixture; with variation.perturbation =
    "bounded" they are NaN here, as each is drawn when the image is rendered from its seed and its
    identity's nearest cosine in the bank rendered from (`ShardWorker`, `synthface.identity.bounded`).
    Image indices (and so seeds and file names) never repeat within an identity: vector v's round r
    is attempt v * max_rounds + r, whose k candidates are images attempt * k .. attempt * k + k - 1.
    """
    k = recipe.variation.candidates_per_identity
    attempt = vector_round * recipe.filtering.max_rounds + round_
    if recipe.variation.is_bounded:  # drawn when rendered: the bound depends on the bank (ShardWorker)
        targets = np.full(k, np.nan)
    else:
        mix_seed = derive_seed(recipe.seed, identity, attempt, IMAGE_MIXTURE_STREAM)
        targets = mixture_cosines(recipe.variation.perturbation, k, seed=mix_seed % 2**32)
    return [
        ImageTask(identity, attempt * k + j, attempt, derive_seed(recipe.seed, identity, attempt * k + j),
                  float(targets[j]), vector_round, draw_pose(recipe, identity, attempt * k + j))
        for j in range(k)
    ]



def shard_identities(recipe: Recipe, shard: int) -> range:
    size = recipe.compute.shard_size
    return range(shard * size, min((shard + 1) * size, recipe.identities.count))


def num_shards(recipe: Recipe) -> int:
    return -(-recipe.identities.count // recipe.compute.shard_size)


@dataclass
class Plan:
    identities: int
    candidates_first_round: int
    images_wanted: int
    shards: int
    shards_done: int
    disk_bytes: int
    seconds_per_candidate: float | None

    @property
    def remaining_hours(self) -> float | None:
        if self.seconds_per_candidate is None:
            return None
        left = self.candidates_first_round * (self.shards - self.shards_done) / max(self.shards, 1)
        return left * self.seconds_per_candidate / 3600


def make_plan(recipe: Recipe, out_dir: Path) -> Plan:
    """What a run will do, and how much is already done in `out_dir` (reads only)."""
    layout = RunLayout(out_dir)
    rates = [r for r in (layout.record(shard_unit(s)) for s in range(num_shards(recipe))) if r is not None]
    per_candidate = None
    speeds = layout.session_speeds()
    if speeds:  # images per second over each rank's wall time (its shards overlap one another)
        per_candidate = sum(1 / v for v in speeds) / len(speeds)
    elif rates:  # a run from before the stage records: each shard's own seconds
        per_candidate = sum(r["seconds"] for r in rates) / max(sum(r["candidates"] for r in rates), 1)
    kept = recipe.identities.count * recipe.variation.images_per_identity
    crop_bytes = 4_500 * (recipe.export.crop_size / 112) ** 2  # a 112x112 face JPEG at q95 is ~4.5 KB
    full_bytes = 0.25 * (recipe.generation.resolution or 512) ** 2 if recipe.export.keep_full_images else 0
    formats = 1 + len(recipe.export.formats)  # shard copies plus each export
    return Plan(
        identities=recipe.identities.count,
        candidates_first_round=recipe.identities.count * recipe.variation.candidates_per_identity,
        images_wanted=kept,
        shards=num_shards(recipe),
        shards_done=len(rates),
        disk_bytes=int(kept * (crop_bytes * formats + full_bytes)),
        seconds_per_candidate=per_candidate,
    )
