"""Separation: nearest-neighbour cosines recorded while sampling equal brute force; memory grows by the bank alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface import screening
from synthface.identity import sample_identities, separation, verify
from synthface.screening import Int8Screen
from tests.helpers.vectors import brute_nearest, steep_gaussian


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_sampler_memory_grows_by_the_bank_alone(kind):
    """No screened copy of the bank: per identity the sampler holds the float32 vector and its
    nearest-neighbour cosine (and an int8 rounding error); work space does not grow with n."""
    dim = 64
    screen = {"float32": screening.Float32Screen(dim), "bfloat16": screening.Bf16Screen(dim),
              "int8": Int8Screen(scale=300.0, dim=dim)}[kind]

    def held(n: int) -> int:
        state = separation.BankState.allocate(n, dim, torch.device("cpu"))
        state.use_screen(screen, 0)
        tensors = [t for obj in (state, state.work) for t in vars(obj).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    per_identity = dim * 4 + 4 + (8 if kind == "int8" else 0)
    assert held(200_000) - held(50_000) == 150_000 * per_identity
    assert held(50_000) - 50_000 * per_identity < 140 * 2**20  # work space: one 4096 x 8192 gram and a block


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("case", ["isotropic", "gaussian", "exclude"])
def test_recorded_nearest_cosines_equal_brute_force(case, kind, small_blocks, monkeypatch):
    monkeypatch.setattr(screening, "SCREEN", kind != "float32")
    monkeypatch.setattr(screening, "INT8", kind == "int8")
    kwargs = dict(n=700, max_cos=0.4, dim=64, seed=3, device="cpu")
    if case != "isotropic":
        kwargs.update(prior=steep_gaussian(), max_cos=0.5)
    if case == "exclude":
        kwargs.update(exclude=steep_gaussian().draw(np.random.default_rng(9), 300), exclude_max_cos=0.45)
    bank = sample_identities(**kwargs)
    truth = brute_nearest(bank.vectors)
    np.testing.assert_allclose(bank.nearest_cos, truth, atol=1e-6)
    np.testing.assert_allclose(bank.nearest_cos, verify(bank, device="cpu").nearest_cos, atol=1e-6)
    recorded = bank.separation(bins=10)
    assert recorded.max_cos == pytest.approx(truth.max(), abs=1e-6) and recorded.max_cos <= kwargs["max_cos"]
    assert recorded.histogram.sum() == 700
    if case == "gaussian":  # the threshold binds: the recorded maximum sits right below it
        assert recorded.max_cos > kwargs["max_cos"] - 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recorded_nearest_cosines_on_cuda(small_blocks):
    bank = sample_identities(700, max_cos=0.5, prior=steep_gaussian(), seed=3, device="cuda")
    np.testing.assert_allclose(bank.nearest_cos, brute_nearest(bank.vectors), atol=1e-6)
    cpu = sample_identities(700, max_cos=0.5, prior=steep_gaussian(), seed=3, device="cpu")
    assert np.allclose(bank.vectors, cpu.vectors, atol=1e-6)
