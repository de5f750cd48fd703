"""Identity banks at scale: nearest-neighbour cosines recorded while sampling, resumable
checkpoints, the cached screening probe and the ETA model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import synthface.identity as identity
from synthface import screening
from synthface.errors import InvalidInputError
from synthface.identity import gaussian_prior, load_bank, sample_identities, verify
from synthface.io import safetensors_bytes


def brute_nearest(x: np.ndarray) -> np.ndarray:
    g = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(g, -2)
    return g.max(axis=1)


def steep_gaussian(dim: int = 64):
    """Variance decaying across dimensions: the threshold binds, so rejections and rechecks happen."""
    rng = np.random.default_rng(0)
    return gaussian_prior(rng.standard_normal((2000, dim)) * np.sqrt(np.exp(-np.arange(dim) / 20.0)))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 96 (tiles of 32, a ragged last one) and batches of 250: many block boundaries."""
    monkeypatch.setattr(identity, "BLOCK", 96)
    monkeypatch.setattr(identity, "CANDIDATE_BATCH", 250)
    monkeypatch.setattr(identity, "INT8_MIN_COUNT", 0)


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


def test_recorded_nearest_cosines_of_tiny_banks():
    assert np.isnan(sample_identities(1, max_cos=0.3, dim=8).nearest_cos).all()
    two = sample_identities(2, max_cos=0.9, dim=8, seed=1)
    cos = float(two.vectors[0] @ two.vectors[1])
    np.testing.assert_allclose(two.nearest_cos, [cos, cos], atol=1e-6)


def test_nearest_cosines_are_saved_streamed_in_the_canonical_layout(tmp_path):
    bank = sample_identities(300, max_cos=0.6, prior="gaussian", reference=steep_gaussian().draw(
        np.random.default_rng(1), 200), seed=2)
    path = bank.save(tmp_path / "ids.safetensors")
    loaded = load_bank(path)
    assert np.array_equal(loaded.nearest_cos, bank.nearest_cos)
    assert loaded.separation().max_cos == bank.separation().max_cos
    # Written from the arrays, yet byte for byte what the safetensors library gives, canonicalised.
    tensors = {"ids": bank.vectors, "nearest_cos": bank.nearest_cos, **bank.prior.tensors()}
    meta = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    assert path.read_bytes() == safetensors_bytes(tensors, meta)
    assert load_bank(bank.save(tmp_path / "plain.safetensors")).separation() is not None


class Killed(Exception):
    pass


def test_killed_sampling_resumes_to_the_identical_bank(tmp_path, small_blocks, monkeypatch):
    kwargs = dict(n=1200, max_cos=0.5, prior=steep_gaussian(), seed=4, device="cpu")
    whole = sample_identities(**kwargs)
    checkpoint = tmp_path / "ids.safetensors.checkpoint"
    real_write = identity._write_checkpoint
    written = []

    def write_then_die(path, args, state, draws, rng):
        real_write(path, args, state, draws, rng)
        written.append(state.count)
        if len(written) == 2:
            raise Killed

    monkeypatch.setattr(identity, "_write_checkpoint", write_then_die)
    with pytest.raises(Killed):
        sample_identities(**kwargs, checkpoint=checkpoint, checkpoint_every=0)
    assert checkpoint.exists() and 0 < written[-1] < 1200
    monkeypatch.setattr(identity, "_write_checkpoint", real_write)
    seen = []
    resumed = sample_identities(**kwargs, checkpoint=checkpoint, checkpoint_every=1e9,
                                progress=lambda state: seen.append(state.accepted))
    assert seen[0] > written[-1]  # it went on from the checkpoint instead of starting over
    assert np.array_equal(resumed.vectors, whole.vectors)
    assert np.array_equal(resumed.nearest_cos, whole.nearest_cos)
    np.testing.assert_allclose(resumed.nearest_cos, brute_nearest(resumed.vectors), atol=1e-6)
    with pytest.raises(InvalidInputError, match=r"seed 4 \(now 5\).*delete the checkpoint"):
        sample_identities(**{**kwargs, "seed": 5}, checkpoint=checkpoint)


def test_screening_probe_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(screening, "SCREEN", None)
    probes = []
    monkeypatch.setattr(screening, "_probe_faster", lambda device, dtype, **kw: probes.append(dtype) or True)
    cpu = torch.device("cpu")
    for _ in range(2):  # two processes' worth: the in-memory answer is forgotten in between
        monkeypatch.setattr(screening, "_BF16_FAST", {})
        assert screening.bf16_dtype(cpu) == torch.bfloat16
    assert probes == [torch.bfloat16]
    stored = json.loads((tmp_path / "cache" / "synthface" / "screening.json").read_text())
    assert list(stored.values()) == [True] and torch.__version__ in next(iter(stored))


@pytest.mark.parametrize("damage", ["cache-is-a-file", "garbage-json", "not-a-dict"])
def test_unusable_probe_cache_is_harmless(tmp_path, monkeypatch, damage):
    if damage == "cache-is-a-file":
        (tmp_path / "cache").write_text("not a folder")  # nothing can be created below it
    else:
        (tmp_path / "cache" / "synthface").mkdir(parents=True)
        (tmp_path / "cache" / "synthface" / "screening.json").write_text("{oops" if damage == "garbage-json" else "[1]")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(screening, "SCREEN", None)
    monkeypatch.setattr(screening, "_BF16_FAST", {})
    probes = []
    monkeypatch.setattr(screening, "_probe_faster", lambda device, dtype, **kw: probes.append(dtype) or False)
    assert screening.bf16_dtype(torch.device("cpu")) is None and probes == [torch.bfloat16]


def eta_trace(n, batch, seconds_of, per_id_of):
    """A sampler's per-batch record: batch k against a bank of c costs seconds_of(k, c) and needs
    per_id_of(c) candidates per accepted identity (the last batch capped at n). Returns the rows
    for `_Eta.add` and the times after each batch."""
    rows, times, count, k = [], [], 0, 0
    while count < n:
        accepted = min(int(batch / per_id_of(count)), n - count)
        rows.append((batch, count, accepted, seconds_of(k, count)))
        times.append((times[-1] if times else 0.0) + rows[-1][3])
        count, k = count + accepted, k + 1
    return rows, times


def worst_eta_error(n, rows, times, budget=10**9):
    """The largest relative error of the ETAs an `_Eta` fed `rows` reports after the first tenth of the
    run; the first one must come before a third of the run."""
    eta, worst, drawn, first = identity._Eta(n), 0.0, 0, None
    for row, elapsed in zip(rows, times):
        eta.add(*row)
        drawn += row[0]
        estimate = eta.remaining(row[1] + row[2], row[0], budget - drawn)
        if estimate is not None and first is None:
            first = elapsed
        if estimate is not None and times[-1] / 10 <= elapsed < times[-1]:
            worst = max(worst, abs(estimate - (times[-1] - elapsed)) / (times[-1] - elapsed))
    assert first is not None and first < times[-1] / 3
    return worst


def test_eta_follows_a_slowing_sampler_whose_acceptance_falls():
    """Batches that cost B (a c + b) seconds while the candidates per identity grow from 1 to about 4:
    after a tenth of the run every estimate is within 3 % of the true time left, where a straight
    line from the count is far off."""
    n, batch, a, b = 200_000, 1000, 2e-9, 1e-5
    rows, times = eta_trace(n, batch, lambda k, c: batch * (a * c + b), lambda c: 1 + 1.5e-5 * c)
    assert worst_eta_error(n, rows, times) < 0.03
    k = next(i for i, t in enumerate(times) if t >= times[-1] / 10)
    count = rows[k][1] + rows[k][2]
    linear = times[k] * (n - count) / count
    assert abs(linear - (times[-1] - times[k])) > 0.3 * (times[-1] - times[k])


def test_eta_shrugs_off_batches_slowed_by_another_process():
    """Early batches taking 4x as long (another process had the cores for a while), a slow warm-up
    first batch and 1 % jitter: the Theil-Sen fit ignores the outliers, so after the first tenth
    every estimate is within 5 % of the time left (the issue asks for 20 %)."""
    n, batch = 100_000, 4096

    def seconds(k, c):
        base = batch * (6.5e-9 * c + 5e-5) * (1 + 0.01 * np.sin(k))
        return base * (4 if k in (2, 5) else 1) + (3.0 if k == 0 else 0.0)

    rows, times = eta_trace(n, batch, seconds, lambda c: 1 / (0.998 - 2e-8 * c))
    assert worst_eta_error(n, rows, times) < 0.05


def test_eta_follows_a_lasting_change_of_speed():
    """Measured at 1M: per-batch cost linear in the bank, then 12 % slower from three quarters of
    the bank on (a slower memory regime). ETA_RECENT batches after the step, every estimate is
    within 3 % of the time left (a line through all batches would stay about 10 % short); the
    worst after the first tenth stays within the issue's 20 %."""
    n, batch, a, b = 200_000, 1000, 2e-9, 1e-5

    def seconds(k, c):
        return batch * (a * c + b) * (1.12 if c >= 0.75 * n else 1.0)

    rows, times = eta_trace(n, batch, seconds, lambda c: 1.0)
    assert worst_eta_error(n, rows, times) < 0.2
    step = next(i for i, row in enumerate(rows) if row[1] >= 0.75 * n)
    eta = identity._Eta(n)
    for i, row in enumerate(rows[:-1]):
        eta.add(*row)
        if i >= step + identity.ETA_RECENT:
            left = times[-1] - times[i]
            assert abs(eta.remaining(row[1] + row[2], batch, 10**9) - left) < 0.03 * left


def test_eta_is_none_until_a_few_batches_are_timed_or_when_the_budget_cannot_reach_n():
    eta = identity._Eta(10_000)
    eta.add(1000, 0, 1000, 0.5)
    for before in range(1000, 1000 + 500 * identity.ETA_MIN_BATCHES, 500):
        assert eta.remaining(before, 1000, 10**6) is None  # the warm-up batch and too few others
        eta.add(1000, before, 500, 0.1)
    assert eta.remaining(4000, 1000, 10**6) > 0
    assert eta.remaining(4000, 1000, 3000) is None  # 6000 more identities at 1 in 2 or worse: 12000+ draws
    assert eta.remaining(10_000, 1000, 0) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recorded_nearest_cosines_on_cuda(small_blocks):
    bank = sample_identities(700, max_cos=0.5, prior=steep_gaussian(), seed=3, device="cuda")
    np.testing.assert_allclose(bank.nearest_cos, brute_nearest(bank.vectors), atol=1e-6)
    cpu = sample_identities(700, max_cos=0.5, prior=steep_gaussian(), seed=3, device="cpu")
    assert np.allclose(bank.vectors, cpu.vectors, atol=1e-6)
