"""NegFaceDiff's negative identities: for each identity of a bank, the other identity whose embedding
steers its samples away (eps = (1 + w) eps(c) - w eps(c_neg), see `IDiffFacePipeline`).

The choices, by cosine similarity between the bank's unit vectors:

- "far" (NegFaceDiff's "fc", its config default): the least similar identity (argmin).
- "close" ("cc"): the most similar *other* identity (argmax with self excluded). The published
  script fills this only for identities 0 and 1; here every identity gets its own.
- "mid" ("mc"): the element at index N // 2 of the ascending order of similarities, self included
  (so with N = 2 it is self).
- "previous" ("rand" in the script, which is not random): identity i - 1, with 0 -> N - 1.

Ties go to the lowest index (argmin / argmax / a stable sort). Similarities are computed in float64,
a block of rows at a time, so a bank of 10,050 identities needs no N x N matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from synthface.errors import InvalidInputError

#: The published names of each choice (NegFaceDiff's `sampling.method`) mapped to ours.
ALIASES = {"fc": "far", "cc": "close", "mc": "mid", "rand": "previous"}
KINDS = ("far", "close", "mid", "previous")
#: Rows of the similarity matrix computed at once (a 1024 x N float64 block).
BLOCK_ROWS = 1024


def _unit_bank(bank) -> torch.Tensor:
    if isinstance(bank, np.ndarray):
        bank = torch.from_numpy(bank)
    if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or bank.shape[0] < 2:
        shape = tuple(bank.shape) if hasattr(bank, "shape") else type(bank).__name__
        raise InvalidInputError(
            f"The negatives come from a bank of identity embeddings, an (N, D) array with N >= 2; got {shape}. "
            "Pass the whole bank of identities being sampled (e.g. the (N, 512) bank file's vectors)."
        )
    x = bank.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError("The identity bank contains NaN or inf; every embedding must be finite.")
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise InvalidInputError("The identity bank contains zero vectors, which name no identity.")
    return x / norms


def negative_indices(bank, kind: str = "far") -> torch.Tensor:
    """(N,) int64: for each identity of `bank` (N, D), the index of its negative by `kind` ("far",
    "close", "mid", "previous", or the published names "fc", "cc", "mc", "rand"; module docstring).

    Raises:
        InvalidInputError: an unknown kind, or a bank that is not (N >= 2, D) finite non-zero vectors.
    """
    name = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if name not in KINDS:
        raise InvalidInputError(
            f"negative kind must be one of {KINDS} (or NegFaceDiff's names {tuple(ALIASES)}), got {kind!r}; "
            "'far' (the least similar identity) is NegFaceDiff's default."
        )
    unit = _unit_bank(bank)
    n = unit.shape[0]
    if name == "previous":
        return (torch.arange(n) - 1) % n
    out = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, BLOCK_ROWS):
        rows = torch.arange(start, min(n, start + BLOCK_ROWS))
        cos = unit[rows] @ unit.T
        if name == "far":
            out[rows] = cos.argmin(dim=1)
        elif name == "close":
            cos[torch.arange(len(rows)), rows] = -torch.inf
            out[rows] = cos.argmax(dim=1)
        else:
            out[rows] = torch.sort(cos, dim=1, stable=True).indices[:, n // 2]
    return out


def negative_embeddings(bank, kind: str = "far") -> torch.Tensor:
    """(N, D) float32: each identity's negative embedding (the bank's own row, as given), by `kind`
    as in `negative_indices`; pass row i as `negative_embeds` when sampling identity i."""
    source = torch.from_numpy(bank) if isinstance(bank, np.ndarray) else bank
    index = negative_indices(bank, kind)
    return source.detach().to("cpu", torch.float32)[index]
