"""NegFaceDiff's negative identities: for each identity of a bank, the other identity whose embedding
steers its samples away (eps = (1 + w) eps(c) - w eps(c_neg), see
`synthface.generators.idiff.pipeline.IDiffFacePipeline`). A bank operation: the engine picks each
rendered identity's negative over the vectors it is rendered from (recipe `generation.sampler.negative`).

The choices, by cosine similarity between the bank's unit vectors:

- "far" (NegFaceDiff's "fc", its config default): the least similar identity (argmin).
- "close" ("cc"): the most similar *other* identity (argmax with self excluded). The published
  script fills this only for identities 0 and 1; here every identity gets its own.
- "mid" ("mc"): the element at index N // 2 of the ascending order of similarities, self included
  (so with N = 2 it is self).
- "previous" ("rand" in the script, which is not random): identity i - 1, with 0 -> N - 1.

Ties go to the lowest index (argmin / argmax / a stable sort). Similarities are computed in float64,
a block of rows at a time, so a bank of 10,050 identities needs no N x N matrix; `rows` asks for some
identities only (a shard's), each row's answer being the one the whole bank gives it.
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


def negative_indices(bank, kind: str = "far", rows=None) -> torch.Tensor:
    """(R,) int64: for each identity `rows` of `bank` (N, D) (default: all N), the index of its negative
    by `kind` ("far", "close", "mid", "previous", or the published names "fc", "cc", "mc", "rand";
    module docstring), over the whole bank.

    Raises:
        InvalidInputError: an unknown kind, a bank that is not (N >= 2, D) finite non-zero vectors, or
            rows that do not index it.
    """
    name = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if name not in KINDS:
        raise InvalidInputError(
            f"negative kind must be one of {KINDS} (or NegFaceDiff's names {tuple(ALIASES)}), got {kind!r}; "
            "'far' (the least similar identity) is NegFaceDiff's default."
        )
    unit = _unit_bank(bank)
    n = unit.shape[0]
    wanted = torch.arange(n) if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64)).reshape(-1)
    if wanted.numel() and (int(wanted.min()) < 0 or int(wanted.max()) >= n):
        raise InvalidInputError(
            f"negative rows must index the bank's {n} identities (0 to {n - 1}), got {int(wanted.min())} to "
            f"{int(wanted.max())}; pass the indices of the identities whose negatives you want."
        )
    if name == "previous":
        return (wanted - 1) % n
    out = torch.empty(wanted.numel(), dtype=torch.int64)
    for start in range(0, wanted.numel(), BLOCK_ROWS):
        ids = wanted[start : start + BLOCK_ROWS]
        cos = unit[ids] @ unit.T
        block = slice(start, start + ids.numel())
        if name == "far":
            out[block] = cos.argmin(dim=1)
        elif name == "close":
            cos[torch.arange(ids.numel()), ids] = -torch.inf
            out[block] = cos.argmax(dim=1)
        else:
            out[block] = torch.sort(cos, dim=1, stable=True).indices[:, n // 2]
    return out


def negative_embeddings(bank, kind: str = "far", rows=None) -> torch.Tensor:
    """(R, D) float32: each identity's negative embedding (the bank's own row, as given), by `kind`
    for `rows` as in `negative_indices`; pass row i as `negative_embeds` when sampling identity rows[i]."""
    source = torch.from_numpy(bank) if isinstance(bank, np.ndarray) else bank
    index = negative_indices(bank, kind, rows)
    return source.detach().to("cpu", torch.float32)[index]
