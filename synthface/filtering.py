"""Keep/drop rules for generated candidates: pure, vectorised functions over embeddings.

Every candidate image either is kept or gets one short, stable drop reason (`DROP_REASONS`).
Images are judged in the filter space (the recogniser that looks at the images): against the ID
vector when that space is also the conditioning space, against a robust class centre otherwise.
Identities are judged by their realised centre (mean of kept images): two identities whose centres
are closer than a threshold collide, and a policy says what happens to the later one.
All heavy steps are blocked matrix products, so memory stays bounded for any number of identities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from synthface.errors import InvalidInputError

#: Every reason an image can be dropped for, in the order the checks run. Per image: no face found,
#: too far from its identity, poor quality, a near-copy of a better image, beyond the images wanted.
#: Per identity: its centre collides with an earlier identity's; its vector was replaced by a fresh
#: one (collision_policy "resample": these are the images of the old vector); it kept too few images.
DROP_REASONS = ("no_face", "low_similarity", "low_quality", "near_duplicate", "surplus", "collision", "replaced",
                "too_few")
KEPT = ""
BLOCK = 4096

# ArcFace 112x112 five-point template (left eye, right eye, nose, left mouth, right mouth): the
# frontal reference for the landmark pose estimate.
_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# Depth of the nose tip in front of the eyes, as a share of the eye distance (yaw) and of the
# eye-to-mouth distance (pitch); typical adult proportions, good to about ten degrees.
_NOSE_DEPTH_PER_EYE_DISTANCE = 0.5
_NOSE_DEPTH_PER_EYE_MOUTH = 0.43


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds and policies for `filter_candidates`; `None` switches a check off.

    rank_by orders candidates of one identity for near-duplicate removal and the best-n
    selection: "index" keeps the rendering order (and so the planned spread of variations),
    "similarity" prefers images closest to the identity, "quality" the best-quality ones.
    """

    min_cos: float | None = 0.5
    min_det_score: float | None = 0.5
    min_sharpness: float | None = None
    max_abs_yaw: float | None = None
    max_abs_pitch: float | None = None
    min_quality: float | None = None
    sharpness_ref: float = 100.0
    duplicate_cos: float | None = 0.95
    keep_per_identity: int | None = None
    rank_by: Literal["index", "similarity", "quality"] = "index"
    collision_cos: float | None = 0.5
    collision_policy: Literal["resample", "drop", "flag"] = "flag"
    centre_trim: float = 0.2
    centre_iterations: int = 3

    def __post_init__(self):
        for name in ("min_cos", "duplicate_cos", "collision_cos"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise InvalidInputError(f"FilterConfig.{name} is a cosine and must lie in [-1, 1], got {value}.")
        if self.keep_per_identity is not None and self.keep_per_identity < 1:
            raise InvalidInputError(f"FilterConfig.keep_per_identity must be >= 1 or None, got {self.keep_per_identity}.")
        if self.rank_by not in ("index", "similarity", "quality"):
            raise InvalidInputError(f"FilterConfig.rank_by must be index, similarity or quality, got {self.rank_by!r}.")
        if self.collision_policy not in ("resample", "drop", "flag"):
            raise InvalidInputError(
                f"FilterConfig.collision_policy must be resample, drop or flag, got {self.collision_policy!r}."
            )
        if not 0.0 <= self.centre_trim < 1.0:
            raise InvalidInputError(f"FilterConfig.centre_trim is a share in [0, 1), got {self.centre_trim}.")
        if self.sharpness_ref <= 0:
            raise InvalidInputError(f"FilterConfig.sharpness_ref must be positive, got {self.sharpness_ref}.")


@dataclass
class FilterResult:
    """Per-candidate verdicts (arrays of length M) and per-identity summaries (length N).

    `identities` are the distinct identity labels in ascending order; `centres[i]` is the
    unit-norm mean of the kept images of `identities[i]` (NaN when none is kept). `collisions`
    lists (label_a, label_b, cosine) with label_a < label_b; `dropped_identities` are those whose
    images the collision policy removed, and `resample` the ones the engine should render again
    with a new ID vector (policy "resample").
    """

    kept: np.ndarray
    reason: np.ndarray
    filter_cos: np.ndarray
    quality: np.ndarray
    pose: np.ndarray | None
    identities: np.ndarray
    centres: np.ndarray
    kept_per_identity: np.ndarray
    collisions: list[tuple[int, int, float]] = field(default_factory=list)
    dropped_identities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    resample: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    compared_to: Literal["id_vector", "centre"] = "id_vector"

    def counts(self) -> dict[str, int]:
        """Number of kept images and of drops per reason (every reason present, zeros included)."""
        out = {"kept": int(self.kept.sum())}
        for name in DROP_REASONS:
            out[name] = int(np.count_nonzero(self.reason == name))
        return out


# --------------------------------------------------------------------------- the whole filter


def filter_candidates(
    identity,
    embeddings,
    *,
    id_vectors=None,
    det_score=None,
    kps=None,
    pose=None,
    sharpness=None,
    config: FilterConfig | None = None,
    device: str | None = None,
) -> FilterResult:
    """Judge M candidate images of several identities and say which to keep and why not.

    identity: (M,) int labels. embeddings: (M, D) filter-space embeddings, a NaN row where no face
    was found. id_vectors: (N, D) ID vectors indexed by label; pass them only when the filter and
    conditioning spaces are the same recogniser, otherwise each image is compared with the robust
    centre of its class. det_score (M,), kps (M, 5, 2) landmarks or pose (M, 3) yaw/pitch/roll in
    degrees, sharpness (M,) (see `sharpness`) feed the quality checks. Checks run in the order of
    `DROP_REASONS`; an image gets the first reason that applies.
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
        reference = robust_centres(unit, inv, face, n, trim=cfg.centre_trim, iterations=cfg.centre_iterations)[inv]
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
    quality = quality_score(det, sharp, pose_arr, sharpness_ref=cfg.sharpness_ref, count=m)
    low_quality = quality_failures(det, sharp, pose_arr, quality, cfg, m)

    reason = np.full(m, KEPT, dtype=object)
    _assign(reason, ~face, "no_face")
    if cfg.min_cos is not None:
        _assign(reason, face & ~(filter_cos >= cfg.min_cos), "low_similarity")
    _assign(reason, face & low_quality, "low_quality")

    priority = {"index": -np.arange(m, dtype=np.float64), "similarity": filter_cos, "quality": quality}[cfg.rank_by]
    priority = np.nan_to_num(np.asarray(priority, dtype=np.float64), nan=-np.inf)
    if cfg.duplicate_cos is not None:
        dup = near_duplicates(unit, inv, reason == KEPT, priority, cfg.duplicate_cos, device=device)
        _assign(reason, dup, "near_duplicate")
    if cfg.keep_per_identity is not None:
        _assign(reason, surplus(inv, reason == KEPT, priority, cfg.keep_per_identity), "surplus")

    centres = class_centres(unit, inv, reason == KEPT, n)
    collisions: list[tuple[int, int, float]] = []
    dropped = np.zeros(0, dtype=np.int64)
    if cfg.collision_cos is not None:
        collisions, losers = _collision_losers(centres, labels, cfg.collision_cos, device)
        if cfg.collision_policy != "flag" and losers.any():
            _assign(reason, losers[inv], "collision")
            dropped = labels[losers]
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
        collisions=collisions,
        dropped_identities=dropped,
        resample=dropped if cfg.collision_policy == "resample" else np.zeros(0, np.int64),
        compared_to=compared_to,
    )


def keep_first(identity, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, reason) with no recogniser: the first `keep` images of each identity in the given order;
    the rest are "surplus"."""
    labels, inv = np.unique(_as_labels(identity), return_inverse=True)
    extra = surplus(inv, np.ones(inv.size, dtype=bool), -np.arange(inv.size, dtype=np.float64), keep)
    reason = np.full(inv.size, KEPT, dtype=object)
    _assign(reason, extra, "surplus")
    return reason == KEPT, reason


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


def judge_identities(
    identity,
    embeddings,
    kept,
    reason,
    *,
    collision_cos: float | None,
    collision_policy: Literal["resample", "drop", "flag"],
    min_images: int = 1,
    drop_too_few: bool = True,
    device: str | None = None,
) -> IdentityVerdict:
    """The per-identity verdicts over a whole set, after the per-image ones (`kept`, `reason`).

    Identity centres are the unit mean of their kept images. Two centres with cosine above
    `collision_cos` collide and the later identity loses: policy "drop" drops its images (reason
    "collision"), "flag" only lists the pair, "resample" lists the loser in `collided` and leaves its
    images to the caller, who replaces its vector. Then, with `drop_too_few`, identities keeping
    fewer than `min_images` images lose them (reason "too_few"). Inputs are not modified.
    """
    labels_in = _as_labels(identity)
    m = labels_in.shape[0]
    kept = np.asarray(kept, dtype=bool).copy()
    reason = np.asarray(reason, dtype=object).copy()
    if kept.shape != (m,) or reason.shape != (m,):
        raise InvalidInputError(f"kept and reason must have one entry per image ({m}), got {kept.shape} and {reason.shape}.")
    labels, inv = np.unique(labels_in, return_inverse=True)
    collisions: list[tuple[int, int, float]] = []
    collided = np.zeros(0, dtype=np.int64)
    emb = _as_embeddings(embeddings, m) if collision_cos is not None else None
    if emb is not None:
        _, unit = unit_rows(emb)
        centres = class_centres(unit, inv, kept, labels.size)
        collisions, losers = _collision_losers(centres, labels, collision_cos, device)
        collided = labels[losers]
        if collision_policy == "drop":
            lose = losers[inv] & kept
            kept &= ~lose
            reason[lose] = "collision"
    too_few = np.zeros(0, dtype=np.int64)
    if drop_too_few:
        short = np.bincount(inv[kept], minlength=labels.size) < min_images
        lose = short[inv] & kept
        kept &= ~lose
        reason[lose] = "too_few"
        too_few = labels[short & (np.bincount(inv[lose], minlength=labels.size) > 0)]
    return IdentityVerdict(kept, reason, collisions, collided, too_few)


def _collision_losers(centres, labels, threshold, device) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """(colliding label pairs with their cosine, boolean mask of the losing rows of `centres`)."""
    pairs = find_collisions(centres, threshold, device=device)
    return [(int(labels[a]), int(labels[b]), float(c)) for a, b, c in pairs], collision_losers(pairs, labels.size)


def _assign(reason: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Give `name` to the images in `mask` that have no reason yet (the first reason wins)."""
    reason[mask & (reason == KEPT)] = name


# --------------------------------------------------------------------------- per image


def unit_rows(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face, unit): rows that are finite and non-zero, and the rows scaled to unit norm (0 elsewhere)."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    face = np.isfinite(norms) & (norms > 0)
    unit = np.zeros_like(x)
    unit[face] = x[face] / norms[face, None]
    return face, unit


def pose_from_landmarks(kps) -> np.ndarray:
    """Rough (yaw, pitch, roll) in degrees from 5-point landmarks (M, 5, 2), ArcFace point order.

    Roll is the eye-line angle. Yaw and pitch come from where the nose tip sits relative to the
    eye and mouth midpoints, with a typical nose depth; the ArcFace template gives (0, 0, 0).
    Good to about ten degrees: enough to drop profiles and to plot a pose spread. Positive yaw:
    the nose points to the image's right; positive pitch: the chin is raised.
    """
    p = np.asarray(kps, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise InvalidInputError(f"kps must have shape (M, 5, 2), got {p.shape}.")
    return (_raw_pose(p) - _raw_pose(_TEMPLATE[None])).astype(np.float32)


def _raw_pose(p: np.ndarray) -> np.ndarray:
    eye_l, eye_r, nose, mouth_l, mouth_r = (p[:, i] for i in range(5))
    eye_vec = eye_r - eye_l
    roll = np.arctan2(eye_vec[:, 1], eye_vec[:, 0])
    cos_r, sin_r = np.cos(-roll), np.sin(-roll)

    def derotate(q):
        return np.stack([q[:, 0] * cos_r - q[:, 1] * sin_r, q[:, 0] * sin_r + q[:, 1] * cos_r], axis=1)

    eyes = derotate((eye_l + eye_r) / 2)
    mouth = derotate((mouth_l + mouth_r) / 2)
    nose_r = derotate(nose)
    eye_dist = np.maximum(np.linalg.norm(eye_vec, axis=1), 1e-9)
    height = np.maximum(mouth[:, 1] - eyes[:, 1], 1e-9)
    t = (nose_r[:, 1] - eyes[:, 1]) / height
    midline_x = eyes[:, 0] + t * (mouth[:, 0] - eyes[:, 0])
    yaw = np.arctan((nose_r[:, 0] - midline_x) / eye_dist / _NOSE_DEPTH_PER_EYE_DISTANCE)
    pitch = np.arctan((0.5 - t) / _NOSE_DEPTH_PER_EYE_MOUTH)
    return np.degrees(np.stack([yaw, pitch, roll], axis=1))


def sharpness(images) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of each image (M, H, W) or (M, H, W, C), uint8 scale.

    Higher is sharper; compare images of one size (the aligned 112x112 crops).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.mean(axis=3)
    if x.ndim != 3 or x.shape[1] < 3 or x.shape[2] < 3:
        raise InvalidInputError(f"images must have shape (M, H, W) or (M, H, W, C) with H, W >= 3, got {np.shape(images)}.")
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return lap.reshape(lap.shape[0], -1).var(axis=1).astype(np.float32)


def quality_score(
    det_score=None, sharp=None, pose=None, *, sharpness_ref: float = 100.0, count: int | None = None
) -> np.ndarray:
    """A quality in [0, 1]: detection score x min(1, sharpness / sharpness_ref) x frontality.

    Frontality is cos(yaw) * cos(pitch), clipped at 0. Missing inputs count as 1; with no input
    at all the result is `count` ones.
    """
    parts = []
    if det_score is not None:
        parts.append(np.clip(np.nan_to_num(np.asarray(det_score, np.float64)), 0, 1))
    if sharp is not None:
        parts.append(np.clip(np.nan_to_num(np.asarray(sharp, np.float64)) / sharpness_ref, 0, 1))
    if pose is not None:
        rad = np.radians(np.nan_to_num(np.asarray(pose, np.float64)[:, :2], nan=90.0))
        parts.append(np.clip(np.cos(rad[:, 0]) * np.cos(rad[:, 1]), 0, 1))
    if not parts:
        return np.ones(count or 0, np.float32)
    return np.prod(parts, axis=0).astype(np.float32)


def quality_failures(det_score, sharp, pose, quality, cfg: FilterConfig, count: int) -> np.ndarray:
    """Boolean (count,) mask of images failing any configured quality threshold."""
    bad = np.zeros(count, dtype=bool)
    if det_score is not None and cfg.min_det_score is not None:
        bad |= ~(det_score >= cfg.min_det_score)
    if sharp is not None and cfg.min_sharpness is not None:
        bad |= ~(sharp >= cfg.min_sharpness)
    if pose is not None and cfg.max_abs_yaw is not None:
        bad |= ~(np.abs(pose[:, 0]) <= cfg.max_abs_yaw)
    if pose is not None and cfg.max_abs_pitch is not None:
        bad |= ~(np.abs(pose[:, 1]) <= cfg.max_abs_pitch)
    if quality is not None and cfg.min_quality is not None:
        bad |= ~(quality >= cfg.min_quality)
    return bad


# --------------------------------------------------------------------------- per identity


def class_centres(unit: np.ndarray, inv: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Unit-norm mean of the masked unit rows of each class 0..n-1; NaN rows for empty classes."""
    import torch

    sums = torch.zeros((n, unit.shape[1]), dtype=torch.float64)
    rows = np.flatnonzero(mask)
    for start in range(0, rows.size, 1 << 16):
        chunk = rows[start : start + (1 << 16)]
        sums.index_add_(0, torch.from_numpy(inv[chunk].astype(np.int64)), torch.from_numpy(unit[chunk]).double())
    out = sums.numpy()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, out / norms, np.nan)
    return out.astype(np.float32)


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


def find_collisions(
    centres: np.ndarray, threshold: float, *, other: np.ndarray | None = None, device: str | None = None, block: int = BLOCK
) -> list[tuple[int, int, float]]:
    """Pairs (a, b, cos) of rows with cosine > threshold: a < b within `centres`, or a in centres and
    b in `other` when given. NaN rows (identities with no kept image) never collide. Blocked GEMM."""
    x = _unit_or_nan(centres)
    y = x if other is None else _unit_or_nan(other)
    ok_x, ok_y = np.isfinite(x).all(1), np.isfinite(y).all(1)
    xs, ys = np.flatnonzero(ok_x), np.flatnonzero(ok_y)
    out: list[tuple[int, int, float]] = []
    for i0 in range(0, xs.size, block):
        a = xs[i0 : i0 + block]
        j_from = i0 if other is None else 0
        for j0 in range(j_from, ys.size, block):
            b = ys[j0 : j0 + block]
            g = _mm(x[a], y[b], device)
            if other is None and j0 == i0:
                g = np.triu(g, k=1) + np.tril(np.full_like(g, -2.0))
            ia, ib = np.nonzero(g > threshold)
            out.extend(zip(a[ia].tolist(), b[ib].tolist(), g[ia, ib].astype(float).tolist()))
    out.sort()
    return out


def collision_losers(pairs: Sequence[tuple[int, int, float]], n: int) -> np.ndarray:
    """Boolean (n,) mask of identities to drop so no colliding pair remains: in index order, an
    identity is dropped when it collides with an earlier identity that is still in (greedy packing)."""
    lost = np.zeros(n, dtype=bool)
    by_b: dict[int, list[int]] = {}
    for a, b, _ in pairs:
        by_b.setdefault(int(b), []).append(int(a))
    for b in sorted(by_b):
        lost[b] = any(not lost[a] for a in by_b[b])
    return lost


def greedy_pack(
    centres: np.ndarray, thresholds: Sequence[float], *, device: str | None = None, block: int = BLOCK
) -> dict[float, np.ndarray]:
    """For each threshold, which rows greedy packing keeps: row i is kept when its cosine to every
    earlier kept row is <= threshold. NaN rows are never kept.

    This is the Vec2Face "unique identities" measure; because greedy packing in row order is
    prefix-stable, `np.cumsum(kept)` is the whole curve of unique vs generated identities. One
    pass of blocked products against rows kept at any threshold serves all thresholds.
    """
    x = _unit_or_nan(centres)
    n = x.shape[0]
    thresholds = [float(t) for t in thresholds]
    keep = {t: np.zeros(n, dtype=bool) for t in thresholds}
    valid = np.flatnonzero(np.isfinite(x).all(1))
    pool_rows: list[np.ndarray] = []  # chunks of row indices kept at some threshold
    for s in range(0, valid.size, block):
        rows = valid[s : s + block]
        xb = x[rows]
        rejected = {t: np.zeros(rows.size, dtype=bool) for t in thresholds}
        lowest = min(thresholds)
        for prev in pool_rows:
            g = _mm(xb, x[prev], device)
            near = np.flatnonzero(g.max(axis=1) > lowest)  # usually few rows: only they need masking
            if near.size:
                g = g[near]
                for t in thresholds:
                    cols = keep[t][prev]
                    if cols.any():
                        rejected[t][near] |= (g[:, cols] > t).any(axis=1)
        g = _mm(xb, xb, device)
        for t in thresholds:
            keep[t][rows] = _greedy_block(g, ~rejected[t], t)
        union = np.zeros(rows.size, dtype=bool)
        for t in thresholds:
            union |= keep[t][rows]
        if union.any():
            pool_rows.append(rows[union])
        pool_rows = _merge_pool(pool_rows, block)
    return keep


def _merge_pool(pool: list[np.ndarray], block: int) -> list[np.ndarray]:
    """Concatenate small pool chunks so each product is at least about a block wide."""
    merged: list[np.ndarray] = []
    for part in pool:
        if merged and merged[-1].size + part.size <= block:
            merged[-1] = np.concatenate([merged[-1], part])
        else:
            merged.append(part)
    return merged


def _greedy_block(gram: np.ndarray, alive: np.ndarray, threshold: float) -> np.ndarray:
    """Sequential greedy rule inside a block whose rows are already screened against earlier blocks."""
    alive = alive.copy()
    clash = np.tril(gram > threshold, k=-1)
    rows_with_clash = np.flatnonzero(clash.any(axis=1))
    for r in rows_with_clash:
        if alive[r] and (alive[:r] & clash[r, :r]).any():
            alive[r] = False
    return alive


def curve_points(n: int, count: int = 20) -> list[int]:
    """About `count` increasing sizes from 1 to n, denser at the start (geometric, then linear)."""
    if n <= 0:
        return []
    pts = set(np.unique(np.round(np.geomspace(1, n, num=count)).astype(np.int64)).tolist())
    pts |= set(np.linspace(0, n, num=count // 2 + 1).round().astype(np.int64).tolist()[1:])
    return sorted(int(p) for p in pts if 1 <= p <= n)


# --------------------------------------------------------------------------- helpers


def _mm(a: np.ndarray, b: np.ndarray, device: str | None) -> np.ndarray:
    """a @ b.T as float32 numpy, on a torch device when one is named."""
    if device is None:
        return a @ b.T
    import torch

    ta, tb = torch.from_numpy(np.ascontiguousarray(a)).to(device), torch.from_numpy(np.ascontiguousarray(b)).to(device)
    return (ta @ tb.T).cpu().numpy()


def _bmm(x: np.ndarray, device: str | None) -> np.ndarray:
    if device is None:
        return np.matmul(x, x.transpose(0, 2, 1))
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return torch.bmm(t, t.transpose(1, 2)).cpu().numpy()


def _unit_or_nan(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise InvalidInputError(f"expected an (N, D) array of vectors, got shape {a.shape}.")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(norms) & (norms > 0), a / norms, np.nan).astype(np.float32)


def _as_labels(identity) -> np.ndarray:
    labels = np.asarray(identity)
    if labels.ndim != 1 or labels.size == 0:
        raise InvalidInputError(f"identity must be a non-empty (M,) array of integer labels, got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"identity must hold integer labels, got dtype {labels.dtype}.")
    return labels.astype(np.int64, copy=False)


def _as_embeddings(embeddings, m: int) -> np.ndarray:
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != m or emb.shape[1] == 0:
        raise InvalidInputError(
            f"embeddings must have shape ({m}, D), one row per candidate (NaN where no face), got {emb.shape}."
        )
    if not np.issubdtype(emb.dtype, np.floating):
        raise InvalidInputError(f"embeddings must be floats (NaN marks no face), got dtype {emb.dtype}.")
    return emb.astype(np.float32, copy=False)


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
