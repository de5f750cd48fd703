"""Shared helpers of the filtering tests: planted sets of identities around random ID vectors."""

from __future__ import annotations

import numpy as np

TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_set(n=12, k=8, d=64, noise=0.08, seed=0):
    """n identities x k images around random ID vectors, returned with labels and ID vectors."""
    rng = np.random.default_rng(seed)
    ids = unit(rng.standard_normal((n, d)))
    labels = np.repeat(np.arange(n), k)
    emb = unit(ids[labels] + noise * rng.standard_normal((n * k, d)))
    return labels, emb, ids, rng
