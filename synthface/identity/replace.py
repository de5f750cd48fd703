"""Replacements: fresh vectors for some rows of a bank (identities that turned out to look alike
in the images), keeping the bank's separation and exclusion margins."""

from __future__ import annotations

import numpy as np

from synthface.errors import InfeasibleThresholdError
from synthface.identity._vectors import ROW_BLOCK, check_vectors, normalise_rows
from synthface.identity.prior import Prior
from synthface.seeds import REPLACE_STREAM, stream_rng

REPLACEMENT_DRAWS = 100_000  # candidates tried per replaced row before giving up


def draw_replacements(
    vectors: np.ndarray,
    rows: np.ndarray,
    *,
    prior: Prior,
    max_cos: float,
    seed: int,
    round_: int,
    exclude: np.ndarray | None = None,
    exclude_max_cos: float | None = None,
    max_draws: int = REPLACEMENT_DRAWS,
) -> np.ndarray:
    """Fresh vectors for `rows` of a bank (e.g. identities that turned out to look alike), drawn from
    the bank's `prior`, each with cosine <= `max_cos` to every other vector of the bank (the kept ones
    and the replacements drawn before it, in the order of `rows`) and <= `exclude_max_cos` (default
    `max_cos`) to every row of `exclude`.

    Deterministic: row r's candidates come from a stream seeded by (seed, round_, r), and the checks
    are exact float32 products. Returns (len(rows), D) float32 unit vectors; raises
    InfeasibleThresholdError when a row finds no candidate within `max_draws`.
    """
    bank = np.array(vectors, dtype=np.float32, copy=True)
    rows = np.asarray(rows, dtype=np.int64)
    ex = None if exclude is None else normalise_rows(check_vectors("exclude", exclude, dim=bank.shape[1]))
    ex_limit = max_cos if exclude_max_cos is None else exclude_max_cos
    others = np.ones(bank.shape[0], dtype=bool)
    others[rows] = False  # the vectors being replaced no longer count
    out = np.empty((rows.size, bank.shape[1]), dtype=np.float32)
    batch = 64
    for k, row in enumerate(rows.tolist()):
        rng = stream_rng(seed, REPLACE_STREAM, round_, row)
        found = None
        for _ in range(0, max_draws, batch):
            cand = prior.draw(rng, batch)
            ok = np.ones(batch, dtype=bool)
            for i in range(0, bank.shape[0], ROW_BLOCK):
                live = others[i : i + ROW_BLOCK]
                if live.any():
                    ok &= (bank[i : i + ROW_BLOCK][live] @ cand.T).max(axis=0) <= max_cos
            if ex is not None:
                ok &= (ex @ cand.T).max(axis=0) <= ex_limit
            if ok.any():
                found = cand[int(np.argmax(ok))]
                break
        if found is None:
            raise InfeasibleThresholdError(
                f"No replacement for identity {row} was found in {max_draws} draws from the {prior.name} prior that "
                f"keeps cosine <= {max_cos} to the other {int(others.sum())} identities"
                f"{' and the excluded vectors' if ex is not None else ''}: the bank is nearly full at this "
                "threshold. Raise identities.max_cos, lower identities.count, or use filtering.collision_policy = "
                "\"drop\".",
                reached=k, feasible_max_cos=float("nan"),
            )
        out[k] = bank[row] = found
        others[row] = True
    return out
