"""Priors: distributions on the unit sphere that identity candidates are drawn from (isotropic, or
a gaussian fitted to real embeddings with Ledoit-Wolf shrinkage)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthface.checks import check_positive_int
from synthface.errors import InvalidInputError
from synthface.identity._vectors import check_vectors

PRIORS = ("isotropic", "gaussian")


@dataclass(frozen=True)
class Prior:
    """A distribution on the unit sphere: normalised draws from N(mean, cov) or uniform (isotropic)."""

    name: str
    dim: int
    mean: np.ndarray | None = None  # (D,) float64, gaussian only
    cov_factor: np.ndarray | None = None  # (D, D) float64 lower Cholesky factor, gaussian only
    shrinkage: float | None = None

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Return `count` unit vectors (float32) from this prior."""
        z = rng.standard_normal((count, self.dim))
        if self.name == "gaussian":
            z = self.mean + z @ self.cov_factor.T
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        return z.astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        if self.name != "gaussian":
            return {}
        return {
            "prior_mean": self.mean.astype(np.float32),
            "prior_cov_factor": np.ascontiguousarray(self.cov_factor, dtype=np.float32),
        }


def isotropic_prior(dim: int = 512) -> Prior:
    """Uniform on the unit sphere."""
    check_positive_int("dim", dim)
    return Prior("isotropic", dim)


def gaussian_prior(reference: np.ndarray, shrinkage: float | None = None) -> Prior:
    """Gaussian fitted to reference embeddings (normalised first), with Ledoit-Wolf shrinkage.

    Shrinking the sample covariance towards a scaled identity keeps it well conditioned when there
    are fewer references than dimensions (a few hundred references for 512-d work). `shrinkage`
    None picks the Ledoit-Wolf optimum; a value in [0, 1] forces it.
    """
    ref = check_vectors("reference", reference)
    if ref.shape[0] < 2:
        raise InvalidInputError(
            f"A gaussian prior needs at least 2 reference embeddings, got {ref.shape[0]}. Pass an "
            "(N, D) array of real embeddings with N >= 2 (a few hundred is better), or use the "
            "isotropic prior."
        )
    x = ref.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean = x.mean(axis=0)
    centred = x - mean
    n, d = centred.shape
    sample_cov = centred.T @ centred / n
    mu = np.trace(sample_cov) / d
    if shrinkage is None:
        # Ledoit & Wolf (2004): optimal convex weight between the sample covariance and mu * I.
        # Written out because scikit-learn is not a dependency; it is a dozen lines.
        delta = np.sum((sample_cov - mu * np.eye(d)) ** 2) / d
        sq = centred**2
        beta_bar = (np.sum(sq.T @ sq) / n - np.sum(sample_cov**2)) / (d * n)
        beta = min(beta_bar, delta)
        shrinkage = 0.0 if delta == 0 else beta / delta
    if not 0.0 <= shrinkage <= 1.0:
        raise InvalidInputError(f"shrinkage must lie in [0, 1], got {shrinkage}.")
    cov = (1.0 - shrinkage) * sample_cov + shrinkage * mu * np.eye(d)
    factor = np.linalg.cholesky(cov + 1e-12 * mu * np.eye(d))
    return Prior("gaussian", d, mean=mean, cov_factor=factor, shrinkage=float(shrinkage))


def resolve_prior(prior: str | Prior, dim: int, reference: np.ndarray | None) -> Prior:
    if isinstance(prior, Prior):
        return prior
    if prior == "isotropic":
        if reference is not None:
            raise InvalidInputError("reference embeddings were given with the isotropic prior; use prior='gaussian' to fit them.")
        return isotropic_prior(dim)
    if prior == "gaussian":
        if reference is None:
            raise InvalidInputError(
                "The gaussian prior is fitted to reference embeddings, and none were given. Pass "
                "reference=<(N, D) array> (CLI: --reference ref.npy), or use the isotropic prior."
            )
        return gaussian_prior(reference)
    raise InvalidInputError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIORS)}.")
