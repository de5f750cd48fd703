"""Per-image rules: every candidate is kept or gets one drop reason, in the order of `DROP_REASONS`
(no face, too far from its identity, poor quality, a near-copy of a better image, beyond the images
wanted). Images are judged in the filter space: against the ID vector when that space is also the
conditioning space, against a robust class centre otherwise."""

from __future__ import annotations

import numpy as np

from synthface.errors import InvalidInputError
from synthface.filtering._arrays import _as_embeddings, _as_labels, _bmm, _unit_or_nan, class_centres, unit_rows
from synthface.filtering.config import KEPT, FilterConfig, FilterResult, ImageVerdicts
from synthface.filtering.quality import pose_from_landmarks, quality_failures, quality_score


def filter_candidates(
    identity,
    embeddings,
    *,
    id_vectors=None,
    det_score=None,
    kps=None,
    pose=None,
    sharpness=None,
    age=None,
    gender=None,
    gender_confidence=None,
    config: FilterConfig | None = None,
    device: str | None = None,
) -> FilterResult:
    """Judge M candidate images of several identities and say which to keep and why not.

    identity: (M,) int labels. embeddings: (M, D) filter-space embeddings, a NaN row where no face
    was found. id_vectors: (N, D) ID vectors indexed by label; pass them only when the filter and
    conditioning spaces are the same recogniser, otherwise each image is compared with the robust
    centre of its class. det_score (M,), kps (M, 5, 2) landmarks or pose (M, 3) yaw/pitch/roll in
    degrees, sharpness (M,) (see `sharpness`) feed the quality score; the detection score is checked
    against `config.min_det_score`. Checks run in the order of `DROP_REASONS` (attribute_drift after
    low_quality); an image gets the first reason that applies. With `config.max_age_gap` and the images'
    apparent `age`, `gender` (and `gender_confidence`, for ties), an image still in whose gender or age
    disagrees with its identity's (over the images still in) is dropped as "attribute_drift"
    (`synthface.filtering.attributes.attribute_drift`). Identity verdicts (collisions, too few images) are `judge_identities`'.
    """
    cfg = config or FilterConfig()
    labels_in = _as_labels(identity)
    m = labels_in.shape[0]
    emb = _as_embeddings(embeddings, m)
    face, unit = unit_rows(emb)
    labels, inv = np.unique(labels_in, return_inverse=True)
    n = labels.shape[0]

    if id_vectors is not None:
        ref_bank = _as_id_vectors(id_vectors, emb.shape[1], labels)
        reference = ref_bank[labels_in]
        compared_to = "id_vector"
    else:
        reference = robust_centres(unit, inv, face, n)[inv]
        compared_to = "centre"
    filter_cos = np.where(face, np.einsum("ij,ij->i", unit, np.nan_to_num(reference)), np.nan).astype(np.float32)

    det = _optional_vector("det_score", det_score, m)
    sharp = _optional_vector("sharpness", sharpness, m)
    if pose is not None:
        pose_arr = np.asarray(pose, dtype=np.float32)
        if pose_arr.shape != (m, 3):
            raise InvalidInputError(f"pose must have shape ({m}, 3) (yaw, pitch, roll in degrees), got {pose_arr.shape}.")
    elif kps is not None:
        pose_arr = pose_from_landmarks(kps)
        if pose_arr.shape[0] != m:
            raise InvalidInputError(f"kps must have one (5, 2) landmark set per candidate ({m}), got {pose_arr.shape[0]}.")
    else:
        pose_arr = None
    quality = quality_score(det, sharp, pose_arr, count=m)
    low_quality = quality_failures(det, cfg.min_det_score, m)

    reason = np.full(m, KEPT, dtype=object)
    _assign(reason, ~face, "no_face")
    if cfg.min_cos is not None:
        _assign(reason, face & ~(filter_cos >= cfg.min_cos), "low_similarity")
    _assign(reason, face & low_quality, "low_quality")
    if cfg.max_age_gap is not None:
        if age is None or gender is None:
            raise InvalidInputError("FilterConfig.max_age_gap (the attribute-drift rule) needs each candidate's "
                                    "apparent age and gender: pass age= and gender=.")
        from synthface.filtering.attributes import attribute_drift

        _assign(reason, attribute_drift(labels_in, age, gender, reason == KEPT, cfg.max_age_gap, gender_confidence),
                "attribute_drift")

    priority = -np.arange(m, dtype=np.float64)  # rendering order: the planned spread of variations
    if cfg.duplicate_cos is not None:
        dup = near_duplicates(unit, inv, reason == KEPT, priority, cfg.duplicate_cos, device=device)
        _assign(reason, dup, "near_duplicate")
    if cfg.keep_per_identity is not None:
        _assign(reason, surplus(inv, reason == KEPT, priority, cfg.keep_per_identity), "surplus")

    centres = class_centres(unit, inv, reason == KEPT, n)
    kept = reason == KEPT
    return FilterResult(
        kept=kept,
        reason=reason,
        filter_cos=filter_cos,
        quality=quality,
        pose=pose_arr,
        identities=labels,
        centres=centres,
        kept_per_identity=np.bincount(inv[kept], minlength=n),
        compared_to=compared_to,
    )


def keep_first(identity, keep: int) -> ImageVerdicts:
    """The verdicts with no recogniser: the first `keep` images of each identity in the given order are
    kept, the rest are "surplus"; similarity, quality and pose are NaN."""
    labels, inv = np.unique(_as_labels(identity), return_inverse=True)
    extra = surplus(inv, np.ones(inv.size, dtype=bool), -np.arange(inv.size, dtype=np.float64), keep)
    reason = np.full(inv.size, KEPT, dtype=object)
    _assign(reason, extra, "surplus")
    return ImageVerdicts.unjudged(reason == KEPT, reason)


def _assign(reason: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Give `name` to the images in `mask` that have no reason yet (the first reason wins)."""
    reason[mask & (reason == KEPT)] = name


def robust_centres(
    unit: np.ndarray, inv: np.ndarray, mask: np.ndarray, n: int, *, trim: float = 0.2, iterations: int = 3
) -> np.ndarray:
    """Trimmed class centres: repeatedly average the ceil((1 - trim) * size) rows nearest the centre.

    A few off-identity images (a planted impostor, a failed render) then do not pull the centre.
    """
    centres = class_centres(unit, inv, mask, n)
    rows = np.flatnonzero(mask)
    if not rows.size:
        return centres
    counts = np.bincount(inv[rows], minlength=n)
    keep_n = np.ceil((1.0 - trim) * counts).astype(np.int64)
    for _ in range(iterations):
        cos = np.einsum("ij,ij->i", unit[rows], centres[inv[rows]])
        rank = _rank_within(inv[rows], cos)
        centres = class_centres(unit[rows], inv[rows], rank < keep_n[inv[rows]], n)
    return centres


def _rank_within(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Position of each element inside its group when the group is sorted by score, best first."""
    order = np.lexsort((-np.asarray(score, np.float64), group))
    g = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, g.size]))
    rank = np.empty(group.size, dtype=np.int64)
    rank[order] = np.arange(group.size) - first
    return rank


def near_duplicates(
    unit: np.ndarray,
    inv: np.ndarray,
    mask: np.ndarray,
    priority: np.ndarray,
    threshold: float,
    *,
    device: str | None = None,
    batch_elements: int = 1 << 24,
) -> np.ndarray:
    """Images (among `mask`) whose cosine to a better-ranked kept image of the same class exceeds `threshold`.

    Greedy per class in `priority` order (higher first): an image is kept unless it is too close
    to one already kept. Classes are processed together in padded batches (bounded memory).
    """
    m = unit.shape[0]
    dup = np.zeros(m, dtype=bool)
    rows = np.flatnonzero(mask)
    if rows.size < 2:
        return dup
    order = rows[np.lexsort((-priority[rows], inv[rows]))]
    g = inv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    sizes = np.diff(np.r_[starts, g.size])
    budget = batch_elements
    c0 = 0
    while c0 < starts.size:
        k = int(sizes[c0])
        c1 = c0 + 1
        while c1 < starts.size and (c1 - c0 + 1) * max(k, int(sizes[c1])) * (max(k, int(sizes[c1])) + unit.shape[1]) <= budget:
            k = max(k, int(sizes[c1]))
            c1 += 1
        dup[_greedy_duplicates(unit, order, starts[c0:c1], sizes[c0:c1], k, threshold, device)] = True
        c0 = c1
    return dup


def _greedy_duplicates(unit, order, starts, sizes, k, threshold, device) -> np.ndarray:
    nc = starts.size
    pos = np.arange(k)
    valid = pos[None, :] < sizes[:, None]
    index = np.where(valid, order[np.minimum(starts[:, None] + pos[None, :], order.size - 1)], 0)
    x = unit[index] * valid[..., None]
    gram = _bmm(x, device)
    kept = np.zeros((nc, k), dtype=bool)
    kept[:, 0] = valid[:, 0]
    for j in range(1, k):
        clash = ((gram[:, j, :j] > threshold) & kept[:, :j]).any(axis=1)
        kept[:, j] = valid[:, j] & ~clash
    return index[valid & ~kept]


def surplus(inv: np.ndarray, mask: np.ndarray, priority: np.ndarray, keep: int) -> np.ndarray:
    """Images beyond the best `keep` (by priority) of each class among `mask`: the best-n-of-k selection."""
    out = np.zeros(inv.shape[0], dtype=bool)
    rows = np.flatnonzero(mask)
    if rows.size:
        out[rows[_rank_within(inv[rows], priority[rows]) >= keep]] = True
    return out


def _as_id_vectors(id_vectors, dim: int, labels: np.ndarray) -> np.ndarray:
    ids = np.asarray(id_vectors, dtype=np.float32)
    if ids.ndim != 2 or ids.shape[1] != dim:
        raise InvalidInputError(
            f"id_vectors must have shape (N, {dim}) like the embeddings, got {ids.shape}. Pass id_vectors only "
            "when the filter recogniser is the conditioning one; otherwise leave it out to compare with class centres."
        )
    if labels.min() < 0 or labels.max() >= ids.shape[0]:
        raise InvalidInputError(
            f"identity labels run from {labels.min()} to {labels.max()} but id_vectors has {ids.shape[0]} rows; "
            "labels index the rows of id_vectors."
        )
    unit = _unit_or_nan(ids)
    if not np.isfinite(unit[labels]).all():
        raise InvalidInputError("id_vectors has NaN, inf or all-zero rows for identities in use.")
    return unit


def _optional_vector(name: str, value, m: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (m,):
        raise InvalidInputError(f"{name} must have shape ({m},), one value per candidate, got {arr.shape}.")
    return arr
