"""Keep/drop rules for generated candidates: pure, vectorised functions over embeddings.

Every candidate image either is kept or gets one short, stable drop reason (`DROP_REASONS`).
Images are judged in the filter space (the recogniser that looks at the images): against the ID
vector when that space is also the conditioning space, against a robust class centre otherwise.
Identities are judged by their realised centre (mean of kept images): two identities whose centres
are closer than a threshold collide, and a policy says what happens to the later one.
All heavy steps are blocked matrix products, so memory stays bounded for any number of identities.

One module per job: `config` (`FilterConfig` with the recipe's defaults, `DROP_REASONS`, the verdict
dataclasses), `images` (per-image rules: `filter_candidates`), `identities` (`judge_identities`,
collisions, greedy packing) and `quality` (pose, sharpness, quality score). This package re-exports
their public names.
"""

from synthface.filtering._arrays import BLOCK, class_centres, gram_block, unit_rows
from synthface.filtering.config import DROP_REASONS, KEPT, FilterConfig, FilterResult, IdentityVerdict, ImageVerdicts
from synthface.filtering.identities import (
    collision_losers,
    curve_points,
    find_collisions,
    greedy_pack,
    judge_identities,
)
from synthface.filtering.images import filter_candidates, keep_first, near_duplicates, robust_centres, surplus
from synthface.filtering.quality import SHARPNESS_REF, pose_from_landmarks, quality_failures, quality_score, sharpness

__all__ = [
    "BLOCK", "DROP_REASONS", "KEPT", "SHARPNESS_REF", "FilterConfig", "FilterResult", "IdentityVerdict",
    "ImageVerdicts", "gram_block", "class_centres", "collision_losers", "curve_points", "filter_candidates",
    "find_collisions", "greedy_pack", "judge_identities", "keep_first", "near_duplicates", "pose_from_landmarks",
    "quality_failures", "quality_score", "robust_centres", "sharpness", "surplus", "unit_rows",
]
