"""Bounded angular perturbation (IDperturb, CVPR 2026): each image's condition vector at a random
cosine to its identity, never beyond the angular bisector towards the identity's nearest neighbour.

For an image of identity i (unit vector v, cosine `nearest_cos_i` to its nearest other identity of
the bank), once before rendering:

- the bound lb_i = max(floor, sqrt((1 + nearest_cos_i) / 2)): the cosine of half the angle to the
  nearest other identity (a bank of one identity, nearest_cos NaN: lb_i = floor);
- the target cosine c = lb_i + s (max_cos - lb_i), s ~ U(0, 1) drawn from the image's own seed
  (`seeds.BOUNDED_STREAM`); when lb_i >= max_cos the bound wins and c = lb_i;
- the vector v' = c v + sqrt(1 - c^2) u, u a random unit direction orthogonal to v from the same
  seed (`perturb`'s direction, `seeds.PERTURB_STREAM`).

Any v' at cosine c >= lb_i to v_i is at least as close to v_i as to any v_j: the angle to v_i is at
most half the angle between v_i and its nearest v_j, and the triangle inequality on the sphere does
the rest. IDperturb's `sample.py` writes sqrt(1 - c^2 + 1e-8) and does not renormalise; synthface
uses the exact unit form (no 1e-8; v' is unit to float32 rounding). A row's result depends only on
its own vector, nearest cosine and seed, never on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthface.checks import check_real
from synthface.errors import InvalidInputError
from synthface.identity._vectors import check_vectors, normalise_rows
from synthface.identity.bank import IdentityBank
from synthface.identity.perturb import _perturb_seeds, perturb
from synthface.seeds import BOUNDED_STREAM, stream_rng

#: IDperturb's defaults: min_cos (our `floor`) and max_cos.
DEFAULT_FLOOR = 0.4
DEFAULT_MAX_COS = 1.0

#: Rows and columns per product of `nearest_cosines` (a 1024 x 16384 float64 block is 128 MiB).
NEAREST_ROWS = 1024
NEAREST_COLUMNS = 16384


def nearest_cosines(vectors: np.ndarray, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Each row's exact cosine to its nearest *other* row of `vectors` (rows normalised first), for
    the rows `rows` (default: all), as float32; NaN where `vectors` has a single row.

    For banks that record none (`IdentityBank.nearest_cos` is None: imported vectors) and for sets
    that changed (collision replacements). Chunked products (NEAREST_ROWS x NEAREST_COLUMNS at a
    time, never N x N) of the float32 unit rows, accumulated in float64 and rounded to float32: a
    row's value is the float32 cosine whatever the chunks or the other rows asked for, so it does not
    depend on which rows are computed together. Self is excluded by index (a duplicate vector at
    another index counts, at cosine 1).
    """
    unit = normalise_rows(check_vectors("vectors", vectors))
    n = unit.shape[0]
    wanted = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        raise InvalidInputError(f"nearest_cosines: rows must index the {n} vectors, got {int(wanted.min())} to "
                                f"{int(wanted.max())}.")
    out = np.full(wanted.size, -np.inf, dtype=np.float64)
    if n < 2:
        return np.full(wanted.size, np.nan, dtype=np.float32)
    for lo in range(0, wanted.size, NEAREST_ROWS):
        ids = wanted[lo : lo + NEAREST_ROWS]
        queries = unit[ids].astype(np.float64)
        best = out[lo : lo + len(ids)]
        for start in range(0, n, NEAREST_COLUMNS):
            cos = queries @ unit[start : start + NEAREST_COLUMNS].astype(np.float64).T
            own = (ids >= start) & (ids < start + cos.shape[1])
            cos[np.flatnonzero(own), ids[own] - start] = -np.inf
            np.maximum(best, cos.max(axis=1), out=best)
    return out.astype(np.float32)


def bank_nearest_cosines(bank: IdentityBank) -> np.ndarray:
    """The bank's recorded nearest-neighbour cosines, or, for a bank that has none (imported
    vectors), `nearest_cosines` of its vectors (computed exactly, once per call)."""
    return bank.nearest_cos if bank.nearest_cos is not None else nearest_cosines(bank.vectors)


def check_bounds(floor: float, max_cos: float) -> None:
    """floor in [-1, 1) and max_cos in (floor, 1], else an InvalidInputError naming them."""
    check_real("floor", floor, -1.0, 1.0)
    check_real("max_cos", max_cos, -1.0, 1.0)
    if not floor < 1.0 or not max_cos > floor:
        raise InvalidInputError(
            f"bounded perturbation needs -1 <= floor < max_cos <= 1, got floor {floor} and max_cos {max_cos}: "
            "the target cosine is drawn between the bound (at least floor) and max_cos."
        )


def lower_bounds(nearest_cos: np.ndarray | Sequence[float], floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """lb = max(floor, sqrt((1 + nearest_cos) / 2)) per row (float64): the cosine of half the angle
    to the nearest other identity; NaN (a bank of one identity) gives floor."""
    near = np.asarray(nearest_cos, dtype=np.float64).reshape(-1)
    half = np.sqrt(np.clip((1.0 + near) / 2.0, 0.0, 1.0))
    return np.where(np.isnan(near), floor, np.maximum(floor, half))


def bounded_cosines(nearest_cos: np.ndarray | Sequence[float], seed: int | Sequence[int], *,
                    floor: float = DEFAULT_FLOOR, max_cos: float = DEFAULT_MAX_COS) -> np.ndarray:
    """Each row's target cosine c = lb + s (max_cos - lb), s ~ U(0, 1) from stream_rng(seed,
    BOUNDED_STREAM) of the row's own seed (`seed`: one per row, or one for all rows, which then
    share one stream in row order); c = lb where lb >= max_cos (the bound wins). float64, (N,)."""
    check_bounds(floor, max_cos)
    lb = lower_bounds(nearest_cos, floor)
    seeds = _perturb_seeds(seed, lb.size)
    if isinstance(seeds, int):
        s = stream_rng(seeds, BOUNDED_STREAM).random(lb.size)
    else:
        s = np.array([stream_rng(k, BOUNDED_STREAM).random() for k in seeds], dtype=np.float64)
    return lb + s * np.maximum(max_cos - lb, 0.0)


def bounded_perturb(vectors: np.ndarray, nearest_cos: np.ndarray | Sequence[float], seed: int | Sequence[int], *,
                    floor: float = DEFAULT_FLOOR, max_cos: float = DEFAULT_MAX_COS) -> tuple[np.ndarray, np.ndarray]:
    """IDperturb's bounded perturbation of each row of `vectors` (identity vectors, one row per image;
    `nearest_cos`: each row's identity's cosine to its nearest other identity; `seed`: one per row
    so a row never depends on its batch-mates). Returns (unit float32 condition vectors, float64
    target cosines). See the module docstring."""
    v = check_vectors("vectors", vectors)
    near = np.asarray(nearest_cos, dtype=np.float64).reshape(-1)
    if near.size != v.shape[0]:
        raise InvalidInputError(f"bounded_perturb got {near.size} nearest cosines for {v.shape[0]} vectors; pass one "
                                "per vector (its identity's cosine to the nearest other identity).")
    targets = bounded_cosines(near, seed, floor=floor, max_cos=max_cos)
    return perturb(v, targets, seed=seed), targets
