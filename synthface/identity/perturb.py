"""Perturbation: unit vectors at an exact target cosine to given identity vectors, and target
cosines drawn in a mixture's proportions. IDperturb's bounded perturbation (cosines drawn above each
identity's bisector bound) is `synthface.identity.bounded`, built on `perturb`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from synthface.checks import is_int
from synthface.errors import InvalidInputError
from synthface.identity._vectors import check_vectors, normalise_rows
from synthface.seeds import MIXTURE_STREAM, PERTURB_STREAM, stream_rng


def perturb(
    vectors: np.ndarray,
    cos: float | Sequence[float] | np.ndarray | Mapping[float, float],
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """Unit vectors at an exact target cosine to each row of `vectors` (angular perturbation).

    Each output is cos * v + sin * u with u a random unit direction orthogonal to v. `cos` is one
    value, one per row, or a mixture such as {0.96: 0.4, 0.90: 0.4, 0.82: 0.2} assigned to rows by
    `mixture_cosines`. `seed` is one seed, or one per row so that a row's result does not depend on
    its batch-mates (the engine derives one per image).
    """
    v = normalise_rows(check_vectors("vectors", vectors)).astype(np.float64)
    n, d = v.shape
    seeds = _perturb_seeds(seed, n)
    if isinstance(cos, Mapping):
        targets = mixture_cosines(cos, n, seed=seeds if isinstance(seeds, int) else seeds[0])
    else:
        given = np.asarray(cos)
        if given.dtype.kind not in "iuf" or given.ndim > 1 or (given.ndim == 1 and len(given) != n):
            what = (f"{len(given)} target cosine(s)" if given.ndim == 1 else
                    f"an array of shape {given.shape}" if given.ndim else f"{cos!r} ({type(cos).__name__})")
            raise InvalidInputError(
                f"perturb got {what} for {n} vectors; pass one number, one per vector (a 1-D sequence of {n}), "
                "or a {cosine: share} mixture."
            )
        targets = np.broadcast_to(given.astype(np.float64), (n,)).copy()
    if not np.all(np.isfinite(targets)) or np.any(targets < -1) or np.any(targets > 1):
        raise InvalidInputError(f"target cosines must lie in [-1, 1]; got values from {targets.min()} to {targets.max()}.")
    if isinstance(seeds, int):
        noise = stream_rng(seeds, PERTURB_STREAM).standard_normal((n, d))
    else:
        noise = np.stack([stream_rng(s, PERTURB_STREAM).standard_normal(d) for s in seeds]) if n else np.zeros((0, d))
    noise -= np.sum(noise * v, axis=1, keepdims=True) * v
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = targets[:, None] * v + np.sqrt(1.0 - targets[:, None] ** 2) * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def _perturb_seeds(seed, n: int) -> int | list[int]:
    """`perturb`'s seed: one non-negative integer, or a 1-D sequence of exactly `n` of them (one per
    vector); anything else (negative, fractional, boolean, text, another count) is an InvalidInputError."""
    def whole(s) -> bool:
        return is_int(s) and s >= 0

    if whole(seed):
        return int(seed)
    many = list(seed) if isinstance(seed, (list, tuple)) or (isinstance(seed, np.ndarray) and seed.ndim == 1) else [seed]
    bad = [s for s in many if not whole(s)]
    if bad:
        raise InvalidInputError(f"perturb's seeds must be non-negative integers (one, or one per vector), got {bad[0]!r}.")
    if len(many) != n:
        raise InvalidInputError(f"perturb got {len(many)} seeds for {n} vectors; pass one seed, or one per vector.")
    return [int(s) for s in many]


def mixture_cosines(mixture: Mapping[float, float], count: int, seed: int = 0) -> np.ndarray:
    """`count` target cosines in the mixture's proportions (largest remainder), in seeded order."""
    if not mixture:
        raise InvalidInputError("the perturbation mixture is empty; give at least one {cosine: share} pair.")
    cosines = np.array([float(c) for c in mixture], dtype=np.float64)
    shares = np.array([float(s) for s in mixture.values()], dtype=np.float64)
    if np.any(shares < 0) or not np.isfinite(shares).all() or shares.sum() <= 0:
        raise InvalidInputError(f"mixture shares must be non-negative and sum to more than 0; got {dict(mixture)}.")
    shares = shares / shares.sum()
    exact = shares * count
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: count - counts.sum()]:
        counts[i] += 1
    values = np.repeat(cosines, counts)
    stream_rng(seed, MIXTURE_STREAM).shuffle(values)
    return values
