"""Array helpers shared by the image and identity rules: unit rows, labels, class centres, blocked
products (on a torch device when one is named)."""

from __future__ import annotations

import numpy as np

from synthface.errors import InvalidInputError

#: Rows per block of the blocked products (bounded memory for any number of identities).
BLOCK = 4096


def unit_rows(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face, unit): rows that are finite and non-zero, and the rows scaled to unit norm (0 elsewhere)."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    face = np.isfinite(norms) & (norms > 0)
    unit = np.zeros_like(x)
    unit[face] = x[face] / norms[face, None]
    return face, unit


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


def gram_block(a: np.ndarray, b: np.ndarray, device: str | None) -> np.ndarray:
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
