"""NegFaceDiff's negative choice (synthface.identity.negatives) against a brute-force computation, per
identity; some rows only give each row the whole bank's answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.identity import negatives
from synthface.identity.negatives import negative_embeddings, negative_indices


def bank(n: int, seed: int = 0, dim: int = 512) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def brute(b: torch.Tensor, kind: str) -> list[int]:
    """Plain Python loops over float64 dot products of the normalised rows."""
    rows = [[float(v) for v in r] for r in torch.nn.functional.normalize(b.double(), dim=1)]
    n, out = len(rows), []
    for i in range(n):
        cos = [sum(a * c for a, c in zip(rows[i], rows[j])) for j in range(n)]
        if kind == "far":
            out.append(min(range(n), key=lambda j: (cos[j], j)))
        elif kind == "close":
            out.append(max((j for j in range(n) if j != i), key=lambda j: (cos[j], -j)))
        else:
            out.append(sorted(range(n), key=lambda j: (cos[j], j))[n // 2])
    return out


@pytest.mark.parametrize("kind", ["far", "close", "mid"])
@pytest.mark.parametrize("n", [2, 7, 40])
def test_against_brute_force(kind, n):
    b = bank(n, seed=n, dim=32)
    assert negative_indices(b, kind).tolist() == brute(b, kind)


def test_close_fills_every_identity_and_never_self():
    b = bank(30, seed=2, dim=16)
    idx = negative_indices(b, "close")
    assert all(int(j) != i for i, j in enumerate(idx))
    cos = b.double() @ b.double().T
    cos.fill_diagonal_(-2)
    assert torch.equal(idx, cos.argmax(dim=1))


def test_mid_includes_self():
    b = bank(2, seed=1, dim=8)  # ascending order [other, self]: index 1 is self
    assert negative_indices(b, "mid").tolist() == [0, 1]


def test_far_is_least_similar():
    b = bank(25, seed=4, dim=16)
    idx = negative_indices(b, "fc")
    cos = b.double() @ b.double().T
    assert torch.equal(cos[torch.arange(25), idx], cos.min(dim=1).values)


def test_previous_and_aliases():
    b = bank(5)
    assert negative_indices(b, "rand").tolist() == [4, 0, 1, 2, 3]
    assert torch.equal(negative_indices(b, "cc"), negative_indices(b, "close"))
    assert torch.equal(negative_indices(b, "mc"), negative_indices(b, "mid"))


def test_blocks_give_the_same_answer(monkeypatch):
    b = bank(23, seed=6, dim=16)
    whole = {k: negative_indices(b, k) for k in ("far", "close", "mid")}
    monkeypatch.setattr(negatives, "BLOCK_ROWS", 4)
    for k, v in whole.items():
        assert torch.equal(negative_indices(b, k), v)


def test_unnormalised_and_numpy_banks():
    b = bank(9, seed=3, dim=16)
    scaled = b * torch.linspace(0.5, 20, 9)[:, None]
    assert torch.equal(negative_indices(scaled.numpy(), "far"), negative_indices(b, "far"))
    emb = negative_embeddings(scaled.numpy(), "close")
    assert emb.dtype == torch.float32 and torch.equal(emb, scaled[negative_indices(b, "close")])


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.ones(1, 4), torch.ones(4), np.full((2, 3), np.nan)])
def test_refuses_bad_banks(bad):
    with pytest.raises(InvalidInputError, match="bank"):
        negative_indices(bad)


def test_refuses_unknown_kind():
    with pytest.raises(InvalidInputError, match="'far'"):
        negative_indices(bank(3), "nearest")


@pytest.mark.parametrize("kind", ["far", "close", "mid", "previous"])
def test_rows_get_the_whole_bank_s_answer_whatever_is_asked_with_them(kind, monkeypatch):
    """A shard asks for its identities only; each gets the negative the whole bank gives it (blocks
    of any size, rows in any order or repeated), so it depends on the identity and the bank alone."""
    b = bank(37, seed=8, dim=16)
    whole = negative_indices(b, kind)
    assert whole.tolist() == (brute(b, kind) if kind != "previous" else [36, *range(36)])
    rows = [30, 2, 2, 17, 36, 0]
    monkeypatch.setattr(negatives, "BLOCK_ROWS", 4)
    assert negative_indices(b, kind, rows).tolist() == whole[rows].tolist()
    assert negative_indices(b.numpy(), kind, np.array(rows[3:])).tolist() == whole[rows[3:]].tolist()
    assert negative_indices(b, kind, []).tolist() == []
    assert torch.equal(negative_embeddings(b, kind, rows), b[whole[rows]])


@pytest.mark.parametrize("rows", [[0, 5], [-1]])
def test_rows_outside_the_bank_are_refused(rows):
    with pytest.raises(InvalidInputError, match="must index the bank's 5 identities"):
        negative_indices(bank(5), "far", rows)
