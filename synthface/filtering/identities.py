"""Identity rules over a whole set: realised centres that collide (`judge_identities`, `find_collisions`,
greedy `collision_losers`), too few kept images, and greedy packing (the unique-identities curve)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from synthface.errors import InvalidInputError
from synthface.filtering._arrays import (
    BLOCK,
    _as_embeddings,
    _as_labels,
    _unit_or_nan,
    class_centres,
    gram_block,
    unit_rows,
)
from synthface.filtering.config import IdentityVerdict


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
            g = gram_block(x[a], y[b], device)
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
            g = gram_block(xb, x[prev], device)
            near = np.flatnonzero(g.max(axis=1) > lowest)  # usually few rows: only they need masking
            if near.size:
                g = g[near]
                for t in thresholds:
                    cols = keep[t][prev]
                    if cols.any():
                        rejected[t][near] |= (g[:, cols] > t).any(axis=1)
        g = gram_block(xb, xb, device)
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
