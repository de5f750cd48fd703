"""Sampling: the separation guarantee, determinism, exclusion, argument checks, screened sampling equal to float32, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthface import screening
from synthface.errors import InfeasibleThresholdError, InvalidInputError
from synthface.identity import sample, sample_identities, separation, verify
from tests.helpers.vectors import bench_like_gaussian, brute_max_cos, brute_nearest, steep_gaussian


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 300),
    dim=st.sampled_from([8, 16, 32]),
    max_cos=st.floats(0.3, 0.95),
    seed=st.integers(0, 2**31),
)
def test_every_pairwise_cosine_is_below_threshold(n, dim, max_cos, seed):
    try:
        bank = sample_identities(n, max_cos=max_cos, dim=dim, seed=seed, max_draws=20_000)
    except InfeasibleThresholdError as exc:
        assert exc.reached < n
        return
    assert bank.vectors.shape == (n, dim) and bank.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, atol=1e-6)
    if n > 1:
        assert brute_max_cos(bank.vectors) <= max_cos


def test_same_arguments_give_identical_vectors_and_seeds_differ():
    a = sample_identities(200, max_cos=0.4, dim=32, seed=7)
    b = sample_identities(200, max_cos=0.4, dim=32, seed=7)
    c = sample_identities(200, max_cos=0.4, dim=32, seed=8)
    assert np.array_equal(a.vectors, b.vectors)
    assert not np.array_equal(a.vectors, c.vectors)


def test_small_candidate_batches_give_the_same_bank_prefix(monkeypatch):
    """Acceptance is greedy in draw order, so a bigger n only appends identities."""
    small = sample_identities(50, max_cos=0.4, dim=64, seed=2)
    large = sample_identities(120, max_cos=0.4, dim=64, seed=2)
    assert np.array_equal(small.vectors, large.vectors[:50])


def test_exclusion_guarantee():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 64)).astype(np.float32)
    bank = sample_identities(100, max_cos=0.6, dim=64, seed=1, exclude=real, exclude_max_cos=0.4)
    real_unit = real / np.linalg.norm(real, axis=1, keepdims=True)
    assert float((bank.vectors @ real_unit.T).max()) <= 0.4
    assert brute_max_cos(bank.vectors) <= 0.6
    assert bank.num_excluded == 400
    # Without the exclusion some identity would be closer than that to a real person.
    free = sample_identities(100, max_cos=0.6, dim=64, seed=1)
    assert float((free.vectors @ real_unit.T).max()) > 0.4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0, max_cos=0.3), "n must be a positive integer"),
        (dict(n=-5, max_cos=0.3), "n must be a positive integer"),
        (dict(n=10, max_cos=1.0), "strictly between -1 and 1"),
        (dict(n=10, max_cos=float("nan")), "strictly between -1 and 1"),
        (dict(n=10, max_cos=-1.0), "strictly between -1 and 1"),
        (dict(n=10, max_cos=0.3, prior="gaussian"), "fitted to reference embeddings"),
        (dict(n=10, max_cos=0.3, prior="vmf"), "unknown prior"),
        (dict(n=10, max_cos=0.3, exclude_max_cos=0.2), "without exclude vectors"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        sample_identities(**kwargs)


def test_bad_reference_and_exclude_vectors():
    good = np.random.default_rng(0).standard_normal((50, 16))
    bad = good.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidInputError, match="row 3"):
        sample_identities(5, max_cos=0.5, prior="gaussian", reference=bad)
    with pytest.raises(InvalidInputError, match="dimension 16 but 512"):
        sample_identities(5, max_cos=0.5, exclude=good)
    inf = good.copy()
    inf[0, 0] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        sample_identities(5, max_cos=0.5, dim=16, exclude=inf)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_same_bank_as_cpu():
    cpu = sample_identities(2000, max_cos=0.3, seed=4, device="cpu")
    gpu = sample_identities(2000, max_cos=0.3, seed=4, device="cuda")
    assert brute_max_cos(gpu.vectors) <= 0.3
    assert np.allclose(cpu.vectors, gpu.vectors, atol=1e-6)


def test_recorded_nearest_cosines_of_tiny_banks():
    assert np.isnan(sample_identities(1, max_cos=0.3, dim=8).nearest_cos).all()
    two = sample_identities(2, max_cos=0.9, dim=8, seed=1)
    cos = float(two.vectors[0] @ two.vectors[1])
    np.testing.assert_allclose(two.nearest_cos, [cos, cos], atol=1e-6)


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("case", ["isotropic", "gaussian", "exclude", "small-blocks"])
def test_screened_sampling_and_verify_equal_float32(case, kind, monkeypatch):
    """Screening changes speed only: the bank and every verified cosine are the float32 ones."""
    monkeypatch.setattr(screening, "INT8", kind == "int8")
    monkeypatch.setattr(sample, "INT8_MIN_COUNT", 0)
    monkeypatch.setattr(separation, "CANDIDATE_BATCH", 512)  # several batches: the bank checks run screened
    kwargs = dict(n=1500, max_cos=0.3, seed=11, device="cpu")
    if case == "gaussian":
        kwargs.update(prior=bench_like_gaussian(), max_cos=0.25)
    elif case == "exclude":
        kwargs.update(exclude=bench_like_gaussian().draw(np.random.default_rng(5), 700), exclude_max_cos=0.25,
                      prior=bench_like_gaussian())
    elif case == "small-blocks":  # several blocks and batches, ragged tiles (gcd(64, 96) = 32)
        monkeypatch.setattr(separation, "BLOCK", 96)
        monkeypatch.setattr(separation, "CANDIDATE_BATCH", 250)
        kwargs.update(n=700, prior=bench_like_gaussian(64), max_cos=0.5)
    results = {}
    for screen in (False, True):
        monkeypatch.setattr(screening, "SCREEN", screen)
        if screen:
            assert screening.gemm_screen(torch.device("cpu"), torch.ones(1, 8)).name == kind
        bank = sample_identities(**kwargs)
        results[screen] = (bank.vectors, verify(bank, bins=10, device="cpu"))
    (plain, plain_check), (screened, screened_check) = results[False], results[True]
    assert np.array_equal(plain, screened)
    assert screened_check.max_cos == plain_check.max_cos <= kwargs["max_cos"]
    np.testing.assert_array_equal(screened_check.nearest_cos, plain_check.nearest_cos)
    g = plain.astype(np.float64) @ plain.T.astype(np.float64)
    np.fill_diagonal(g, -2)
    np.testing.assert_allclose(screened_check.nearest_cos, g.max(1), atol=1e-6)
    if case == "gaussian":  # the threshold binds: cosines fell in the recheck band
        assert plain_check.max_cos > kwargs["max_cos"] - 0.01


def test_screen_probes_are_cached_and_fall_back(monkeypatch):
    monkeypatch.setattr(sample, "INT8_MIN_COUNT", 0)
    monkeypatch.setattr(screening, "SCREEN", None)
    monkeypatch.setattr(screening, "INT8", None)
    monkeypatch.setattr(screening, "_BF16_FAST", {"cpu": False})
    monkeypatch.setattr(screening, "_INT8_FAST", {"cpu": False})
    cpu = torch.device("cpu")
    assert screening.bf16_dtype(cpu) is None and screening.gemm_screen(cpu, torch.ones(2, 8)) is None
    bank = sample_identities(300, max_cos=0.4, dim=64, seed=1, device="cpu")
    monkeypatch.setattr(screening, "_BF16_FAST", {"cpu": True})
    assert screening.bf16_dtype(cpu) == torch.bfloat16
    assert screening.gemm_screen(cpu, torch.ones(2, 8)).name == "bfloat16"
    assert np.array_equal(sample_identities(300, max_cos=0.4, dim=64, seed=1, device="cpu").vectors, bank.vectors)
    monkeypatch.setattr(screening, "_INT8_FAST", {"cpu": True})
    assert screening.gemm_screen(cpu, torch.ones(2, 8)).name == "int8"
    assert np.array_equal(sample_identities(300, max_cos=0.4, dim=64, seed=1, device="cpu").vectors, bank.vectors)


class Killed(Exception):
    pass


def test_killed_sampling_resumes_to_the_identical_bank(tmp_path, small_blocks, monkeypatch):
    kwargs = dict(n=1200, max_cos=0.5, prior=steep_gaussian(), seed=4, device="cpu")
    whole = sample_identities(**kwargs)
    checkpoint = tmp_path / "ids.safetensors.checkpoint"
    real_write = sample._write_checkpoint
    written = []

    def write_then_die(path, args, state, draws, rng):
        real_write(path, args, state, draws, rng)
        written.append(state.count)
        if len(written) == 2:
            raise Killed

    monkeypatch.setattr(sample, "_write_checkpoint", write_then_die)
    with pytest.raises(Killed):
        sample_identities(**kwargs, checkpoint=checkpoint, checkpoint_every=0)
    assert checkpoint.exists() and 0 < written[-1] < 1200
    monkeypatch.setattr(sample, "_write_checkpoint", real_write)
    seen = []
    resumed = sample_identities(**kwargs, checkpoint=checkpoint, checkpoint_every=1e9,
                                progress=lambda state: seen.append(state.accepted))
    assert seen[0] > written[-1]  # it went on from the checkpoint instead of starting over
    assert np.array_equal(resumed.vectors, whole.vectors)
    assert np.array_equal(resumed.nearest_cos, whole.nearest_cos)
    np.testing.assert_allclose(resumed.nearest_cos, brute_nearest(resumed.vectors), atol=1e-6)
    with pytest.raises(InvalidInputError, match=r"seed 4 \(now 5\).*delete the checkpoint"):
        sample_identities(**{**kwargs, "seed": 5}, checkpoint=checkpoint)
