"""What the filter is told and what it decides: `FilterConfig` (its defaults are the recipe schema's,
`FilterConfig.from_recipe`), every drop reason (`DROP_REASONS`), and the verdicts as dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from synthface.errors import InvalidInputError
from synthface.recipe import FilteringConfig

#: Every reason an image can be dropped for, in the order the checks run. Per image: no face found,
#: too far from its identity, poor quality, a near-copy of a better image, beyond the images wanted.
#: Per identity: its centre collides with an earlier identity's; its vector was replaced by a fresh
#: one (collision_policy "resample": these are the images of the old vector); it kept too few images.
#: Added later (so appended, not in check order: it runs after low_quality, and for whole inconsistent
#: identities at the end): the apparent gender or age disagrees with its identity's (filtering.attribute_consistency).
DROP_REASONS = ("no_face", "low_similarity", "low_quality", "near_duplicate", "surplus", "collision", "replaced",
                "too_few", "attribute_drift")
#: The reason of a kept image.
KEPT = ""


def _recipe_default(name: str):
    """The recipe schema's default of filtering.`name`: the library's one set of defaults."""
    return FilteringConfig.model_fields[name].default


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds for `filter_candidates`; `None` switches a check off. The defaults are the recipe's
    (`synthface.recipe.FilteringConfig`): min_cos None there means the analyser's same-person cosine,
    which only `from_recipe` knows (pass `same_person_cos`); here, without an analyser, it means off.
    Candidates of one identity are ranked in rendering order (so the planned spread of variations is
    kept) for near-duplicate removal and the best-n selection."""

    min_cos: float | None = _recipe_default("min_cos")
    min_det_score: float | None = _recipe_default("min_det_score")
    duplicate_cos: float | None = _recipe_default("near_duplicate_cos")
    keep_per_identity: int | None = None
    max_age_gap: float | None = None  # the attribute-drift rule's gap in years; None: the rule is off

    def __post_init__(self):
        for name in ("min_cos", "duplicate_cos"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise InvalidInputError(f"FilterConfig.{name} is a cosine and must lie in [-1, 1], got {value}.")
        if self.keep_per_identity is not None and self.keep_per_identity < 1:
            raise InvalidInputError(f"FilterConfig.keep_per_identity must be >= 1 or None, got {self.keep_per_identity}.")

    @classmethod
    def from_recipe(cls, filtering: FilteringConfig, *, same_person_cos: float, keep_per_identity: int) -> FilterConfig:
        """The per-image configuration of a recipe's `filtering` section: min_cos defaults to the
        analyser's declared `same_person_cos`; `keep_per_identity` is variation.images_per_identity; the
        attribute-drift rule is on (max_age_gap) with filtering.attribute_consistency."""
        return cls(
            min_cos=same_person_cos if filtering.min_cos is None else filtering.min_cos,
            min_det_score=filtering.min_det_score,
            duplicate_cos=filtering.near_duplicate_cos,
            keep_per_identity=keep_per_identity,
            max_age_gap=filtering.max_age_gap if filtering.attribute_consistency else None,
        )


@dataclass
class ImageVerdicts:
    """The per-image verdicts of M candidates (arrays of length M), in candidate order: kept, the drop
    reason (`KEPT` for kept ones, else one of `DROP_REASONS`), the cosine in the filter space, the
    quality in [0, 1] and the (yaw, pitch, roll) in degrees, (M, 3); NaN where no recogniser looked.
    This is what the engine's worker writes into the manifest."""

    kept: np.ndarray
    reason: np.ndarray
    filter_cos: np.ndarray
    quality: np.ndarray
    pose: np.ndarray | None

    @classmethod
    def unjudged(cls, kept: np.ndarray, reason: np.ndarray) -> ImageVerdicts:
        """Verdicts with no recogniser (filtering off): similarity, quality and pose are NaN."""
        m = len(kept)
        nan = np.full(m, np.nan, dtype=np.float32)
        return cls(kept, reason, nan, nan, np.full((m, 3), np.nan, dtype=np.float32))


@dataclass
class FilterResult(ImageVerdicts):
    """`filter_candidates`' verdicts (ImageVerdicts) and per-identity summaries (length N).

    `identities` are the distinct identity labels in ascending order; `centres[i]` is the unit-norm
    mean of the kept images of `identities[i]` (NaN when none is kept). Identity-level verdicts
    (collisions, too few images) are `judge_identities`', over the whole set.
    """

    identities: np.ndarray
    centres: np.ndarray
    kept_per_identity: np.ndarray
    compared_to: Literal["id_vector", "centre"] = "id_vector"

    def counts(self) -> dict[str, int]:
        """Number of kept images and of drops per reason (every reason present, zeros included)."""
        out = {"kept": int(self.kept.sum())}
        for name in DROP_REASONS:
            out[name] = int(np.count_nonzero(self.reason == name))
        return out


@dataclass
class IdentityVerdict:
    """What `judge_identities` decided: per image (kept, reason: length M) and per identity.

    collisions: (a, b, cos) pairs of identity labels, a < b, whose centres collide. collided: the
    labels that lose a collision (the later of each pair, greedily), whatever the policy did with
    them. too_few: the labels dropped for keeping fewer than `min_images` images.
    """

    kept: np.ndarray
    reason: np.ndarray
    collisions: list[tuple[int, int, float]]
    collided: np.ndarray
    too_few: np.ndarray
