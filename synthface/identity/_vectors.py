"""Checks and row helpers for arrays of vectors: what every part of the identity package accepts
as (N, D) vectors, what a bank holds (finite unit rows), normalisation and digests, all in
bounded extra memory (ROW_BLOCK rows at a time)."""

from __future__ import annotations

import hashlib

import numpy as np

from synthface.errors import InvalidInputError


def check_vectors(name: str, array, dim: int | None = None) -> np.ndarray:
    """`array` as float32 (N, D) vectors with N, D > 0, every row finite and of non-zero norm in
    float32 (a direction), else InvalidInputError naming `name` and the first offending row.
    Complex, boolean and other non-real arrays are refused, never silently cast."""
    x = np.asarray(array)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidInputError(f"{name} must be a non-empty (N, D) array of vectors, got shape {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInputError(
            f"{name} has dimension {x.shape[1]} but {dim} is expected; its vectors must come from "
            "the same recogniser as the identities (ArcFace: 512)."
        )
    if np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidInputError(
            f"{name} holds complex numbers (dtype {x.dtype}); identity vectors are real. Pass the real "
            "vectors (for example array.real, if every imaginary part is zero) as a float array."
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidInputError(f"{name} must hold real numbers (a float or integer array), got dtype {x.dtype}.")
    _refuse_rows(name, ~finite_rows(x), "with NaN or inf", "remove them before use")
    _refuse_rows(name, row_norms(x) == 0, "that are all zero, which have no direction", "remove them")
    x32 = x.astype(np.float32, copy=False)
    if x32 is not x:
        _refuse_rows(name, ~finite_rows(x32), "with values beyond float32's range (3.4e38)",
                     "scale the vectors down (for example to unit norm)")
        _refuse_rows(name, row_norms(x32) == 0, "whose values all underflow to zero in float32",
                     "scale the vectors up (for example to unit norm)")
    return x32


UNIT_ATOL = 1e-4  # how far from 1 a saved bank's row norms may be (float32 rounding is ~1e-7)


def bank_problem(x: np.ndarray) -> str | None:
    """None when `x` is a non-empty (N, D) float array of finite unit rows (norms within UNIT_ATOL of 1),
    else what is wrong, in words; one pass over the rows."""
    if x.ndim != 2 or 0 in x.shape or x.dtype.kind != "f":
        return f"is not a non-empty (N, D) float array (shape {x.shape}, dtype {x.dtype})"
    norms = row_norms(x)
    for bad, what in ((~np.isfinite(norms), "with NaN or inf"), (np.abs(norms - 1.0) > UNIT_ATOL, "of norm other than 1")):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return f"has {int(bad.sum())} row(s) {what} (first: row {first}, norm {norms[first]:.6g})"
    return None


def _refuse_rows(name: str, bad: np.ndarray, what: str, fix: str) -> None:
    if bad.any():
        raise InvalidInputError(
            f"{name} has {int(bad.sum())} row(s) {what} (first: row {int(np.flatnonzero(bad)[0])}); {fix}."
        )


ROW_BLOCK = 1 << 16  # rows converted to float64 at a time, so norms cost bounded extra memory


def finite_rows(x: np.ndarray) -> np.ndarray:
    """Whether each row is all finite, ROW_BLOCK rows at a time (no N x D temporary)."""
    finite = np.empty(x.shape[0], dtype=bool)
    for i in range(0, x.shape[0], ROW_BLOCK):
        finite[i : i + ROW_BLOCK] = np.isfinite(x[i : i + ROW_BLOCK]).all(axis=1)
    return finite


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, computed in float64: a float32 row of tiny (or huge) values whose
    float32 sum of squares underflows (overflows) still gets its true norm."""
    norms = np.empty(x.shape[0], dtype=np.float64)
    for i in range(0, x.shape[0], ROW_BLOCK):
        norms[i : i + ROW_BLOCK] = np.linalg.norm(x[i : i + ROW_BLOCK].astype(np.float64), axis=1)
    return norms


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm float32 rows, divided in float64 so that tiny or huge rows normalise correctly."""
    out = np.empty(x.shape, dtype=np.float32)
    for i in range(0, x.shape[0], ROW_BLOCK):
        block = x[i : i + ROW_BLOCK].astype(np.float64)
        out[i : i + ROW_BLOCK] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()
