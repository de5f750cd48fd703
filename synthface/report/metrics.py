"""Dataset measures computed without training a model, each a plain function over embeddings.

Scores are cosines between unit-normalised filter-space embeddings of kept images. Definitions
(the tests recompute each by brute force):
- a pair is accepted when its score is strictly above the threshold t;
  FAR(t) = share of impostor scores > t, FRR(t) = share of genuine scores <= t;
- EER: over t in {-2} and all observed scores, the t minimising |FAR - FRR| (the smallest on
  ties); EER = (FAR + FRR) / 2 there;
- TAR at FAR f: the smallest such t with FAR(t) <= f, and the share of genuine scores > t.
Genuine pairs are all same-identity pairs, or a uniform sample of them past `max_genuine_pairs`;
impostor pairs are all different-identity pairs among a uniform sample of `impostor_images`
images (all of them on small sets). Both are bounded, so memory is too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.filtering import curve_points, gram_block, greedy_pack
from synthface.seeds import GENUINE_PAIRS_STREAM, IMPOSTOR_ROWS_STREAM

ACCEPT_ALL = -2.0
CHUNK_ROWS = 1 << 16
PAIR_BATCH = 1 << 15


@dataclass
class ClassPass:
    """What one pass over the kept images grouped by identity yields."""

    labels: np.ndarray  # (N,) identity labels in ascending order (every label in the manifest)
    counts: np.ndarray  # (N,) kept images per label
    centres: np.ndarray  # (N, D) unit-norm mean of kept images, NaN where none
    cos_to_centre: np.ndarray  # (K,) per kept image, in `rows` order
    rows: np.ndarray  # (K,) manifest rows of kept images, grouped by identity
    genuine: np.ndarray  # genuine scores
    genuine_pairs_total: int
    genuine_exact: bool
    genuine_class: np.ndarray | None = None  # (G,) int32: the index into `labels` of each genuine score's identity


def class_pass(
    embeddings: np.ndarray,
    identity: np.ndarray,
    kept: np.ndarray,
    *,
    max_genuine_pairs: int = 2_000_000,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> ClassPass:
    """Centres, cosine of each image to its centre, and genuine scores in one chunked pass.

    `embeddings` may be a memory map; it is read a few tens of thousands of rows at a time.
    """
    identity = np.asarray(identity, dtype=np.int64)
    labels, inv = np.unique(identity, return_inverse=True)
    n, dim = labels.size, embeddings.shape[1]
    kept_rows = np.flatnonzero(np.asarray(kept, dtype=bool))
    rows = kept_rows[np.argsort(inv[kept_rows], kind="stable")]
    cls = inv[rows]
    counts = np.bincount(cls, minlength=n)
    present = np.flatnonzero(counts)
    starts = np.r_[0, np.cumsum(counts[present])[:-1]].astype(np.int64)  # row offset of each present class
    pairs_per = counts[present].astype(np.int64) * (counts[present] - 1) // 2
    pair_cum = np.r_[0, np.cumsum(pairs_per)].astype(np.int64)
    total_pairs = int(pair_cum[-1])
    exact = total_pairs <= max_genuine_pairs
    if exact:
        wanted = np.arange(total_pairs, dtype=np.int64)
    else:
        wanted = np.sort(np.random.default_rng([seed, GENUINE_PAIRS_STREAM]).integers(0, total_pairs, size=max_genuine_pairs))

    centres = np.full((n, dim), np.nan, dtype=np.float32)
    cos_to_centre = np.empty(rows.size, dtype=np.float32)
    genuine = np.empty(wanted.size, dtype=np.float32)
    genuine_class = np.empty(wanted.size, dtype=np.int32)
    c0 = 0
    while c0 < present.size:
        # a chunk of whole classes, at least one class, at most about chunk_rows images
        limit = starts[c0] + max(chunk_rows, int(counts[present[c0]]))
        c1 = max(c0 + 1, int(np.searchsorted(starts + counts[present], limit, side="right")))
        r0, r1 = int(starts[c0]), int(starts[c1 - 1] + counts[present[c1 - 1]])
        x = _read_unit(embeddings, rows[r0:r1])
        local_starts = starts[c0:c1] - r0
        sums = np.add.reduceat(x, local_starts, axis=0)
        cen = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
        centres[present[c0:c1]] = cen
        sizes = counts[present[c0:c1]]
        cos_to_centre[r0:r1] = np.einsum("ij,ij->i", x, np.repeat(cen, sizes, axis=0))
        p0, p1 = np.searchsorted(wanted, [pair_cum[c0], pair_cum[c1]])
        if p1 > p0:
            w = wanted[p0:p1]
            k = np.searchsorted(pair_cum[c0 : c1 + 1], w, side="right") - 1  # class within chunk
            i, j = _pair_from_index(w - pair_cum[c0 + k], sizes[k].astype(np.int64))
            a, b = local_starts[k] + i, local_starts[k] + j
            genuine_class[p0:p1] = present[c0 + k]
            for q in range(0, a.size, PAIR_BATCH):  # gather a bounded number of rows at a time
                genuine[p0 + q : min(p1, p0 + q + PAIR_BATCH)] = np.einsum(
                    "ij,ij->i", x[a[q : q + PAIR_BATCH]], x[b[q : q + PAIR_BATCH]]
                )
        c0 = c1
    return ClassPass(labels, counts, centres, cos_to_centre, rows, genuine, total_pairs, exact, genuine_class)


def _read_unit(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of `embeddings` (contiguous runs are sliced, not gathered) as unit float32 vectors."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
        x = np.asarray(embeddings[rows[0] : rows[-1] + 1], dtype=np.float32)
    else:
        x = np.asarray(embeddings[rows], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0))
    if bad.any():
        raise FileFormatError(
            f"manifest row {int(rows[np.flatnonzero(bad)[0]])} is marked kept but its embedding is NaN or zero "
            "(no face); kept images must have an embedding."
        )
    return x / norms


def _pair_from_index(r: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The r-th pair (i, j), i < j, of n items in lexicographic order, vectorised."""
    r = r.astype(np.int64)
    b = 2 * n - 1
    i = np.floor((b - np.sqrt(np.maximum(b.astype(np.float64) ** 2 - 8 * r, 0))) / 2).astype(np.int64)
    i = np.clip(i, 0, n - 2)

    def offset(k):
        return k * n - k * (k + 1) // 2

    i = np.where(offset(i + 1) <= r, i + 1, i)
    i = np.where(offset(i) > r, i - 1, i)
    return i, r - offset(i) + i + 1


@dataclass
class ImpostorPairs:
    """Impostor scores and where they come from: `rows` (the sampled manifest rows, sorted) and, per
    score, the positions `a` < `b` of its two images in `rows` (so a caller can keep the pairs of a group)."""

    scores: np.ndarray
    exact: bool
    rows: np.ndarray
    a: np.ndarray
    b: np.ndarray


def impostor_pairs(
    embeddings: np.ndarray, identity: np.ndarray, rows: np.ndarray, *, images: int = 4096, seed: int = 0
) -> ImpostorPairs:
    """Scores of all different-identity pairs among `images` sampled rows (all rows when fewer)."""
    rows = np.sort(np.asarray(rows))
    exact = rows.size <= images
    if not exact:
        rows = np.sort(np.random.default_rng([seed, IMPOSTOR_ROWS_STREAM]).choice(rows, size=images, replace=False))
    x = _read_unit(embeddings, rows)
    lab = np.asarray(identity)[rows]
    index = np.min_scalar_type(max(rows.size - 1, 0))
    parts, firsts, seconds = [], [], []
    for s in range(0, rows.size, 1024):
        g = gram_block(x[s : s + 1024], x, None)
        ii, jj = np.nonzero((np.arange(s, s + g.shape[0])[:, None] < np.arange(rows.size)[None, :]) & (lab[s : s + 1024, None] != lab[None, :]))
        parts.append(g[ii, jj])
        firsts.append((ii + s).astype(index))
        seconds.append(jj.astype(index))

    def joined(chunks, dtype):
        return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype)

    return ImpostorPairs(joined(parts, np.float32), exact, rows, joined(firsts, index), joined(seconds, index))


def impostor_scores(
    embeddings: np.ndarray, identity: np.ndarray, rows: np.ndarray, *, images: int = 4096, seed: int = 0
) -> tuple[np.ndarray, bool]:
    """(scores, exact) of `impostor_pairs`."""
    pairs = impostor_pairs(embeddings, identity, rows, images=images, seed=seed)
    return pairs.scores, pairs.exact


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold); NaN when either side is empty."""
    if genuine.size == 0 or impostor.size == 0:
        return math.nan, math.nan
    g, i = np.sort(genuine.astype(np.float64)), np.sort(impostor.astype(np.float64))
    t = np.sort(np.concatenate([[ACCEPT_ALL], g, i]), kind="stable")  # two sorted runs: a linear merge
    t = t[np.r_[True, t[1:] != t[:-1]]]
    far = (i.size - np.searchsorted(i, t, side="right")) / i.size
    frr = np.searchsorted(g, t, side="right") / g.size
    k = int(np.argmin(np.abs(far - frr)))
    return float((far[k] + frr[k]) / 2), float(t[k])


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict:
    """{"tar", "threshold", "reliable"}: reliable when at least 10 impostor pairs may be accepted."""
    if genuine.size == 0 or impostor.size == 0:
        return {"tar": math.nan, "threshold": math.nan, "reliable": False}
    allowed = math.floor(far * impostor.size + 1e-9)
    desc = np.sort(impostor.astype(np.float64))[::-1]
    threshold = ACCEPT_ALL if allowed >= desc.size else float(desc[allowed])
    return {
        "tar": float(np.mean(genuine > threshold)),
        "threshold": threshold,
        "reliable": bool(far * impostor.size >= 10),
    }


def unique_identities(
    centres: np.ndarray, thresholds: Sequence[float] = (0.3, 0.4), *, points: Sequence[int] | None = None, device=None
) -> dict[str, dict]:
    """Vec2Face separability curve: unique identities (greedy packing of centres, in label order)
    among the first n generated, for each threshold; {"0.3": {"generated": [...], "unique": [...]}}."""
    kept = greedy_pack(centres, thresholds, device=device)
    pts = curve_points(centres.shape[0]) if points is None else list(points)
    out = {}
    for t in thresholds:
        cum = np.cumsum(kept[float(t)])
        out[_key(t)] = {"generated": [int(p) for p in pts], "unique": [int(cum[p - 1]) for p in pts]}
    return out


def leakage(centres: np.ndarray, reference: np.ndarray, labels: np.ndarray, *, threshold: float = 0.4, block: int = 4096) -> dict:
    """Best match of each synthetic identity centre among real identity centres; flagged above threshold."""
    ref = np.asarray(reference, dtype=np.float32)
    if ref.ndim != 2 or ref.shape[1] != centres.shape[1]:
        raise InvalidInputError(
            f"the reference has shape {ref.shape} but the run's embeddings are {centres.shape[1]}-d; the reference "
            "must hold real identity centres from the same recogniser as the run's filter."
        )
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    valid = np.flatnonzero(np.isfinite(centres).all(1))
    best = np.full(valid.size, -2.0, dtype=np.float32)
    arg = np.zeros(valid.size, dtype=np.int64)
    for s in range(0, valid.size, block):
        a = centres[valid[s : s + block]]
        for r0 in range(0, ref.shape[0], block):
            g = gram_block(a, ref[r0 : r0 + block], None)
            j = g.argmax(axis=1)
            v = g[np.arange(g.shape[0]), j]
            better = v > best[s : s + block]
            best[s : s + block][better] = v[better]
            arg[s : s + block][better] = j[better] + r0
    order = np.argsort(-best, kind="stable")
    flagged = [
        {"identity": int(labels[valid[k]]), "reference": int(arg[k]), "cos": float(best[k])}
        for k in order
        if best[k] > threshold
    ]
    return {
        "reference_identities": int(ref.shape[0]),
        "threshold": float(threshold),
        "checked": int(valid.size),
        "max_cos": float(best.max()) if best.size else math.nan,
        "mean_cos": float(best.mean()) if best.size else math.nan,
        "flagged_count": len(flagged),
        "flagged": flagged,
        "best_cos": best,
    }


def summary(x: np.ndarray) -> dict:
    """mean, std, min, p05, median, p95, max of a float array (NaN when empty)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {k: math.nan for k in ("mean", "std", "min", "p05", "median", "p95", "max")}
    p05, med, p95 = np.percentile(x, [5, 50, 95])
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "p05": float(p05),
        "median": float(med),
        "p95": float(p95),
        "max": float(x.max()),
    }


def _key(t: float) -> str:
    return f"{float(t):g}"
