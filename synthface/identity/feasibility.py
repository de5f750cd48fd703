"""Feasibility of a threshold: refusals of thresholds no set of unit vectors can meet (before
drawing anything), and, when sampling stops short, a threshold that would work and the error
message that names the option at fault."""

from __future__ import annotations

import math

import numpy as np
import torch

from synthface.errors import InfeasibleThresholdError
from synthface.identity import separation
from synthface.identity.prior import Prior
from synthface.identity.verify import verify_vectors
from synthface.seeds import PROBE_STREAM, stream_rng

FEASIBLE_CAP = 0.999  # thresholds must stay below 1; advice never names 1.0


def probe_draws(n: int, prior: Prior, seed: int) -> np.ndarray:
    """Plain draws from the prior (at most 50,000, from the seed's probe stream) that stand in for n:
    the infeasible path draws them once and judges every threshold on them."""
    return prior.draw(stream_rng(seed, PROBE_STREAM), min(n, 50_000))


def feasible_threshold(n: int, sample: np.ndarray, exclude: np.ndarray | None = None) -> float:
    """A threshold that n plain draws from the prior already satisfy, measured on `sample` (their
    `probe_draws`): their exact max pairwise cosine, or with `exclude` their max cosine to its rows;
    rounded up to 0.001, at most FEASIBLE_CAP."""
    m = sample.shape[0]
    if exclude is None:
        observed = float(verify_vectors(sample, bins=0).max_cos)
        pairs, probed = n * (n - 1) / 2, m * (m - 1) / 2
    else:
        ex = torch.from_numpy(exclude)
        observed = max(
            float(_max_cos_against(torch.from_numpy(sample[i : i + separation.CANDIDATE_BATCH]), ex).max())
            for i in range(0, m, separation.CANDIDATE_BATCH)
        )
        pairs, probed = n * exclude.shape[0], m * exclude.shape[0]
    if n > m and probed > 1:
        # The maximum of m cosines grows like sqrt(log m); scale to n's pair count.
        observed *= math.sqrt(math.log(pairs) / math.log(probed))
    return min(FEASIBLE_CAP, math.ceil(min(observed, 1.0) * 1000) / 1000)


def infeasible_message(
    n: int, count: int, draws: int, max_cos: float, prior: Prior, feasible: float,
    exclude: np.ndarray | None, exclude_max_cos: float | None, probe: np.ndarray,
) -> str:
    """What stopped sampling and the fix: the option at fault, with a valid value that works alone."""
    head = (
        f"Reached only {count} of {n} identities with every pairwise cosine <= {max_cos}"
        + ("" if exclude is None else f" and every cosine to the {exclude.shape[0]} excluded vectors <= {exclude_max_cos}")
        + f" after {draws} candidates from the {prior.name} prior (dim {prior.dim}); the acceptance rate "
        "shows the rest cannot be reached."
    )
    if feasible > max_cos:
        if feasible >= FEASIBLE_CAP:
            return f"{head} No --max-cos below 1 is met by {n} plain draws from this prior; ask for fewer identities."
        return f"{head} Ask for fewer identities, or raise --max-cos: about {feasible} is met by {n} plain draws from this prior."
    if exclude is not None:
        feasible_ex = feasible_threshold(n, probe, exclude)
        if feasible_ex > exclude_max_cos:
            fix = (
                f"raise --exclude-max-cos: about {feasible_ex} is met by {n} plain draws from this prior"
                if feasible_ex < FEASIBLE_CAP else "exclude fewer vectors"
            )
            return (
                f"{head} The exclusion is what cannot be met (--max-cos {max_cos} alone is feasible). Ask for "
                f"fewer identities, or {fix}."
            )
    return (
        f"{head} Each threshold is feasible alone but not all together within the draw budget; ask for fewer "
        "identities, or raise both thresholds a little."
    )


def check_geometric_feasibility(n: int, max_cos: float, dim: int) -> None:
    """Reject thresholds no set of n unit vectors can meet, before drawing anything."""
    if n > 1 and max_cos < -1.0 / (n - 1):
        bound = -1.0 / (n - 1)
        raise InfeasibleThresholdError(
            f"No {n} unit vectors can have every pairwise cosine <= {max_cos}: the mean pairwise "
            f"cosine of {n} unit vectors is at least {bound:.6f}. Raise --max-cos to at least that.",
            reached=0,
            feasible_max_cos=bound,
        )
    if max_cos < 0 and n > dim + 1:
        raise InfeasibleThresholdError(
            f"At most {dim + 1} vectors in {dim} dimensions can have all pairwise cosines below 0, "
            f"so {n} identities at max_cos {max_cos} are impossible. Use a threshold >= 0.",
            reached=0,
            feasible_max_cos=0.0,
        )


def _max_cos_against(cand: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Row-wise max cosine of `cand` against `bank`, in blocks of the bank (float32)."""
    best = torch.full((cand.shape[0],), -2.0, device=cand.device)
    for start in range(0, bank.shape[0], separation.BLOCK):
        best = torch.maximum(best, (cand @ bank[start : start + separation.BLOCK].T).amax(dim=1))
    return best
