"""Shared helpers of the identity and screening tests: brute-force references, priors that make
thresholds bind, vectors that round badly."""

from __future__ import annotations

import numpy as np

from synthface.identity import gaussian_prior


def brute_max_cos(x: np.ndarray) -> float:
    """The exact (float64) maximum pairwise cosine of unit rows `x`."""
    g = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(g, -2)
    return float(g.max())


def brute_nearest(x: np.ndarray) -> np.ndarray:
    """Each unit row's exact (float64) cosine to its nearest other row."""
    g = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(g, -2)
    return g.max(axis=1)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def anisotropic_reference(n: int = 400, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.exp(-np.arange(dim) / 20.0)
    return rng.standard_normal((n, dim)) * scales + 0.1


def steep_gaussian(dim: int = 64):
    """Variance decaying across dimensions: the threshold binds, so rejections and rechecks happen."""
    rng = np.random.default_rng(0)
    return gaussian_prior(rng.standard_normal((2000, dim)) * np.sqrt(np.exp(-np.arange(dim) / 20.0)))


def bench_like_gaussian(dim: int = 512):
    """Variance decaying across dimensions (as in benchmarks/bench_identity.py): at 0.3 the
    threshold binds, so many cosines fall near it and the float32 rechecks are exercised."""
    rng = np.random.default_rng(0)
    return gaussian_prior(rng.standard_normal((2000, dim)) * np.sqrt(np.exp(-np.arange(dim) / 150.0)))


def rounds_badly(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """Vectors whose every element sits just below a bfloat16 rounding midpoint, so that
    rounding loses almost 2^-8 of each, in the same direction (down in magnitude)."""
    exponents = rng.integers(-6, -3, size=(count, dim))
    signs = rng.choice([-1.0, 1.0], size=(count, dim))
    return (signs * np.ldexp(1 + 2.0**-8 - 2.0**-20, exponents)).astype(np.float32)
