"""Identity banks: the separation guarantee, determinism, exclusion, perturbation, save/load."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthface import screening
from synthface.errors import FileFormatError, InfeasibleThresholdError, InvalidInputError, OutputPathError
from synthface.identity import (
    gaussian_prior,
    load_bank,
    load_vectors,
    mixture_cosines,
    perturb,
    sample_identities,
    verify,
)
from synthface.screening import Int8Screen, screen_delta


def brute_max_cos(x: np.ndarray) -> float:
    g = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(g, -2)
    return float(g.max())


def anisotropic_reference(n: int = 400, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.exp(-np.arange(dim) / 20.0)
    return rng.standard_normal((n, dim)) * scales + 0.1


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


def test_gaussian_prior_guarantee_and_support():
    ref = anisotropic_reference()
    bank = sample_identities(500, max_cos=0.6, prior="gaussian", reference=ref, seed=3)
    assert brute_max_cos(bank.vectors) <= 0.6
    # The samples stay in the prior's support: they lean towards the reference mean direction.
    mean_dir = ref.mean(0) / np.linalg.norm(ref.mean(0))
    iso = sample_identities(500, max_cos=0.6, dim=64, seed=3)
    assert float((bank.vectors @ mean_dir).mean()) > 0.15
    assert abs(float((iso.vectors @ mean_dir).mean())) < 0.05


def test_verify_matches_brute_force_across_blocks(monkeypatch):
    import synthface.identity as identity

    monkeypatch.setattr(identity, "BLOCK", 64)  # force several blocks, including a ragged one
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    check = verify(x, bins=10)
    g = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(g, -2)
    assert check.max_cos == pytest.approx(g.max(), abs=1e-6)
    np.testing.assert_allclose(check.nearest_cos, g.max(1), atol=1e-6)
    assert check.histogram.sum() == 300 and len(check.edges) == 11


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


def test_infeasible_threshold_ends_quickly_with_counts_and_a_feasible_threshold():
    ref = anisotropic_reference()
    start = time.perf_counter()
    with pytest.raises(InfeasibleThresholdError) as info:
        sample_identities(3000, max_cos=0.05, prior="gaussian", reference=ref, seed=0)
    assert time.perf_counter() - start < 60
    err = info.value
    assert 0 < err.reached < 3000
    assert f"Reached only {err.reached} of 3000" in str(err)
    assert 0.05 < err.feasible_max_cos <= 1.0
    assert f"about {err.feasible_max_cos}" in str(err)
    # The threshold it suggests is indeed met by the prior.
    bank = sample_identities(3000, max_cos=err.feasible_max_cos, prior="gaussian", reference=ref, seed=0)
    assert brute_max_cos(bank.vectors) <= err.feasible_max_cos


def test_geometrically_impossible_thresholds_fail_before_sampling():
    with pytest.raises(InfeasibleThresholdError, match="mean pairwise"):
        sample_identities(100, max_cos=-0.5, dim=512)
    with pytest.raises(InfeasibleThresholdError, match="At most 9 vectors"):
        sample_identities(10, max_cos=-0.01, dim=8)
    spread = sample_identities(3, max_cos=-0.2, dim=3, seed=0)
    assert brute_max_cos(spread.vectors) <= -0.2


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


@pytest.mark.parametrize("target", [0.96, 0.9, 0.82, 0.5, 0.0, -0.3])
def test_perturb_hits_exact_cosine(target):
    bank = sample_identities(64, max_cos=0.5, dim=512, seed=0)
    out = perturb(bank.vectors, target, seed=5)
    assert out.shape == bank.vectors.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(out * bank.vectors, axis=1), target, atol=1e-5)


def test_perturb_per_row_seeds_are_independent_of_batch_mates():
    bank = sample_identities(8, max_cos=0.5, dim=64, seed=1)
    seeds = [101, 102, 103, 104, 105, 106, 107, 108]
    together = perturb(bank.vectors, 0.9, seed=seeds)
    alone = perturb(bank.vectors[5:6], 0.9, seed=seeds[5:6])
    np.testing.assert_array_equal(together[5], alone[0])
    # Different seeds give different directions at the same cosine.
    assert float(together[0] @ perturb(bank.vectors[:1], 0.9, seed=[999])[0]) < 0.99


def test_perturb_mixture_follows_shares_and_cosines():
    mixture = {0.96: 0.4, 0.90: 0.4, 0.82: 0.2}
    values = mixture_cosines(mixture, 50, seed=0)
    assert sorted(np.unique(values)) == [0.82, 0.90, 0.96]
    assert (values == 0.96).sum() == 20 and (values == 0.90).sum() == 20 and (values == 0.82).sum() == 10
    centre = sample_identities(1, max_cos=0.5, dim=512).vectors
    out = perturb(np.repeat(centre, 50, axis=0), mixture, seed=0)
    np.testing.assert_allclose(np.sort(out @ centre[0]), np.sort(values), atol=1e-5)
    with pytest.raises(InvalidInputError, match="empty"):
        mixture_cosines({}, 3)


def test_save_load_round_trip(tmp_path):
    ref = anisotropic_reference(dim=32)
    bank = sample_identities(100, max_cos=0.6, prior="gaussian", reference=ref, seed=9)
    path = bank.save(tmp_path / "ids.safetensors")
    loaded = load_bank(path)
    assert np.array_equal(loaded.vectors, bank.vectors)
    assert (loaded.prior.name, loaded.max_cos, loaded.seed) == ("gaussian", 0.6, 9)
    np.testing.assert_allclose(loaded.prior.mean, bank.prior.mean, rtol=1e-6)
    # The saved prior draws the same candidates as the fitted one.
    draws_a = bank.prior.draw(np.random.default_rng(0), 5)
    draws_b = loaded.prior.draw(np.random.default_rng(0), 5)
    np.testing.assert_allclose(draws_a, draws_b, atol=1e-5)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        meta = handle.metadata()
        assert handle.get_tensor("ids").dtype == np.float32
    assert meta["prior"] == "gaussian" and meta["seed"] == "9" and meta["version"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_npy_import(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((20, 512)) * 5
    np.save(tmp_path / "v.npy", vectors)
    bank = load_bank(tmp_path / "v.npy")
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1, atol=1e-6)
    assert load_vectors(tmp_path / "v.npy").shape == (20, 512)


def test_corrupt_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        load_bank(tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FileFormatError, match="not a readable safetensors"):
        load_bank(tmp_path / "junk.safetensors")
    with pytest.raises(FileFormatError, match="does not exist"):
        load_bank(tmp_path / "missing.safetensors")
    np.save(tmp_path / "wrong.npy", np.zeros(5))
    with pytest.raises(InvalidInputError, match=r"\(N, D\)"):
        load_vectors(tmp_path / "wrong.npy")


def test_output_path_errors_keep_existing_files(tmp_path, monkeypatch):
    import errno
    import os

    bank = sample_identities(5, max_cos=0.5, dim=8)
    with pytest.raises(OutputPathError, match="does not exist"):
        bank.save(tmp_path / "missing" / "ids.safetensors")
    target = tmp_path / "ids.safetensors"
    target.write_bytes(b"previous")
    # A read-only folder (simulated: this suite runs as root, which ignores permission bits).
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(OutputPathError, match="read-only"):
        bank.save(target)
    monkeypatch.setattr(os, "access", real_access)
    # A disk that fills up during the write: the old file stays, no temporary file is left.
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputPathError, match="No space left"):
        bank.save(target)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ids.safetensors"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_same_bank_as_cpu():
    cpu = sample_identities(2000, max_cos=0.3, seed=4, device="cpu")
    gpu = sample_identities(2000, max_cos=0.3, seed=4, device="cuda")
    assert brute_max_cos(gpu.vectors) <= 0.3
    assert np.allclose(cpu.vectors, gpu.vectors, atol=1e-6)


# --------------------------------------------------------------------------- bfloat16 screening


def _bench_like_gaussian(dim: int = 512):
    """Variance decaying across dimensions (as in benchmarks/bench_identity.py): at 0.3 the
    threshold binds, so many cosines fall near it and the float32 rechecks are exercised."""
    rng = np.random.default_rng(0)
    return gaussian_prior(rng.standard_normal((2000, dim)) * np.sqrt(np.exp(-np.arange(dim) / 150.0)))


def _rounds_badly(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """Vectors whose every element sits just below a bfloat16 rounding midpoint, so that
    rounding loses almost 2^-8 of each, in the same direction (down in magnitude)."""
    exponents = rng.integers(-6, -3, size=(count, dim))
    signs = rng.choice([-1.0, 1.0], size=(count, dim))
    return (signs * np.ldexp(1 + 2.0**-8 - 2.0**-20, exponents)).astype(np.float32)


@pytest.mark.parametrize("dim", [64, 512])
def test_bf16_screening_error_is_within_the_bound(dim):
    rng = np.random.default_rng(dim)
    bad = _rounds_badly(rng, 256, dim)
    # Pairs that share a fraction of coordinates exactly: their rounding errors add up coherently,
    # at cosines from about 0.3 to 1 (x with itself).
    partner = _rounds_badly(rng, 256, dim)
    share = rng.uniform(0.3, 1.0, size=(256, 1)) > np.linspace(0, 1, dim)[None, :]
    partner = np.where(share, bad, partner)
    unit = rng.standard_normal((256, dim)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    raw_bound = screen_delta(dim) / 1.25
    worst = 0.0
    for x, y in ((bad, partner), (bad, bad), (unit, unit), (_normalise(bad), _normalise(partner))):
        exact = torch.from_numpy(x) @ torch.from_numpy(y).T
        screened = (torch.from_numpy(x).bfloat16() @ torch.from_numpy(y).bfloat16().T).float()
        norms = np.linalg.norm(x, axis=1)[:, None] * np.linalg.norm(y, axis=1)[None, :]
        diff = (screened - exact).abs().numpy()
        assert (diff <= raw_bound * norms).all(), float((diff / norms).max())
        worst = max(worst, float((diff / norms).max()))
    assert worst > 0.6 * raw_bound  # the vectors really are adversarial, so the check has teeth
    assert screen_delta(dim) < 0.02


@pytest.mark.parametrize("dim", [64, 512])
def test_int8_screening_error_is_within_the_per_pair_bound(dim):
    """Vectors whose coordinates all sit just below a rounding midpoint of the int8 grid (errors
    add up coherently), pairs sharing coordinates, plain random vectors, and vectors the scale
    was not fitted to (clipped coordinates): |screened - float32| stays within the bound."""
    rng = np.random.default_rng(dim)
    unit = _normalise(rng.standard_normal((256, dim)).astype(np.float32))
    screen = Int8Screen.fitted(torch.from_numpy(unit))
    steps = rng.integers(1, 40, size=(256, dim)) * rng.choice([-1, 1], size=(256, dim))
    bad = _normalise(((steps + np.sign(steps) * 0.499) / screen.scale).astype(np.float32))
    share = rng.uniform(0.3, 1.0, size=(256, 1)) > np.linspace(0, 1, dim)[None, :]
    partner = _normalise(np.where(share, bad, unit))
    spiky = unit.copy()
    spiky[:, 0] = 0.9  # far outside the fitted range: clipped to 127
    spiky = _normalise(spiky)
    worst = 0.0
    for x, y in ((bad, partner), (bad, bad), (unit, unit), (spiky, unit), (spiky, bad)):
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        (qx, ex), (qy, ey) = screen.prepare(tx), screen.prepare(ty)
        screened = screen.cosines(screen.gram(qx, qy)).double()
        exact = (tx @ ty.T).double()
        bound = torch.stack([screen.slack(ex, float(e)) for e in ey], dim=1)
        assert ((screened - exact).abs() <= bound).all()
        worst = max(worst, float(((screened - exact).abs() / bound).max()))
    assert worst > 0.3  # the bound is not vacuous: coherent errors come within a few times of it
    assert float(screen.slack(torch.tensor(0.011), 0.011)) < 0.03  # 512-d: ~0.02, a few rechecks


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_blocks_lowered_into_a_reused_buffer_equal_the_prepared_copy(kind):
    """The sampler rounds each bank block into one reused buffer (through a float32 scratch of any
    number of rows for int8): the values a whole screened copy would hold, stale contents ignored."""
    x = torch.from_numpy(_normalise(np.random.default_rng(5).standard_normal((3000, 64))))
    screen = Int8Screen.fitted(x[:500]) if kind == "int8" else screening.Bf16Screen(64)
    want = screen.prepare(x)[0]
    buffer = torch.full((1000, 64), 7, dtype=screen.dtype)
    scratch = torch.full((7, 64), 3.0) if kind == "int8" else None
    for start in (0, 1000, 2000):
        block = screen.lower(x[start : start + 1000], buffer, scratch)
        assert block.data_ptr() == buffer.data_ptr() and torch.equal(block, want[start : start + 1000])


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_sampler_memory_grows_by_the_bank_alone(kind):
    """No screened copy of the bank: per identity the sampler holds the float32 vector and its
    nearest-neighbour cosine (and an int8 rounding error); work space does not grow with n."""
    import synthface.identity as identity

    dim = 64
    screen = {"float32": screening.Float32Screen(dim), "bfloat16": screening.Bf16Screen(dim),
              "int8": Int8Screen(scale=300.0, dim=dim)}[kind]

    def held(n: int) -> int:
        state = identity._Bank.allocate(n, dim, torch.device("cpu"))
        state.use_screen(screen, 0)
        tensors = [t for obj in (state, state.work) for t in vars(obj).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    per_identity = dim * 4 + 4 + (8 if kind == "int8" else 0)
    assert held(200_000) - held(50_000) == 150_000 * per_identity
    assert held(50_000) - 50_000 * per_identity < 140 * 2**20  # work space: one 4096 x 8192 gram and a block


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("case", ["isotropic", "gaussian", "exclude", "small-blocks"])
def test_screened_sampling_and_verify_equal_float32(case, kind, monkeypatch):
    """Screening changes speed only: the bank and every verified cosine are the float32 ones."""
    import synthface.identity as identity

    monkeypatch.setattr(screening, "INT8", kind == "int8")
    monkeypatch.setattr(identity, "INT8_MIN_COUNT", 0)
    monkeypatch.setattr(identity, "CANDIDATE_BATCH", 512)  # several batches: the bank checks run screened
    kwargs = dict(n=1500, max_cos=0.3, seed=11, device="cpu")
    if case == "gaussian":
        kwargs.update(prior=_bench_like_gaussian(), max_cos=0.25)
    elif case == "exclude":
        kwargs.update(exclude=_bench_like_gaussian().draw(np.random.default_rng(5), 700), exclude_max_cos=0.25,
                      prior=_bench_like_gaussian())
    elif case == "small-blocks":  # several blocks and batches, ragged tiles (gcd(64, 96) = 32)
        monkeypatch.setattr(identity, "BLOCK", 96)
        monkeypatch.setattr(identity, "CANDIDATE_BATCH", 250)
        kwargs.update(n=700, prior=_bench_like_gaussian(64), max_cos=0.5)
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
    import synthface.identity as identity

    monkeypatch.setattr(identity, "INT8_MIN_COUNT", 0)
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

def test_verify_normalises_blocks_on_the_fly_to_the_same_bits():
    """verify holds no normalised copy of the bank: its rows are divided by their float64 norms block by
    block, giving `_normalise_rows`'s values bit for bit, for slices and gathered rows, tiny and huge."""
    import torch

    import synthface.identity as identity

    x = (np.random.default_rng(0).standard_normal((3000, 64)) * np.logspace(-20, 20, 3000)[:, None]).astype(np.float32)
    rows = identity._UnitRows(x, torch.device("cpu"))
    want = identity._normalise_rows(x)
    assert np.array_equal(rows[0:3000].numpy(), want)
    assert np.array_equal(rows[torch.tensor([5, 2999, 17])].numpy(), want[[5, 2999, 17]])
    assert rows.raw.data_ptr() == torch.from_numpy(x).data_ptr()  # the array itself, not a copy
    assert not rows.unit
    buffer = torch.empty((1000, 64))
    assert np.array_equal(rows.block_into(2500, buffer).numpy(), want[2500:])  # the short last block
    # Rows normalising leaves unchanged are served as they are, with the same bits.
    again = identity._UnitRows(want, torch.device("cpu"))
    assert again.unit and np.array_equal(again.block_into(0, buffer).numpy(), identity._normalise_rows(want)[:1000])
