"""Screened cosines: error bounds of the bfloat16 and int8 screens, reused buffers, the cached probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthface import screening
from synthface.screening import Int8Screen, screen_delta
from tests.helpers.vectors import normalise, rounds_badly


@pytest.mark.parametrize("dim", [64, 512])
def test_bf16_screening_error_is_within_the_bound(dim):
    rng = np.random.default_rng(dim)
    bad = rounds_badly(rng, 256, dim)
    # Pairs that share a fraction of coordinates exactly: their rounding errors add up coherently,
    # at cosines from about 0.3 to 1 (x with itself).
    partner = rounds_badly(rng, 256, dim)
    share = rng.uniform(0.3, 1.0, size=(256, 1)) > np.linspace(0, 1, dim)[None, :]
    partner = np.where(share, bad, partner)
    unit = rng.standard_normal((256, dim)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    raw_bound = screen_delta(dim) / 1.25
    worst = 0.0
    for x, y in ((bad, partner), (bad, bad), (unit, unit), (normalise(bad), normalise(partner))):
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
    unit = normalise(rng.standard_normal((256, dim)).astype(np.float32))
    screen = Int8Screen.fitted(torch.from_numpy(unit))
    steps = rng.integers(1, 40, size=(256, dim)) * rng.choice([-1, 1], size=(256, dim))
    bad = normalise(((steps + np.sign(steps) * 0.499) / screen.scale).astype(np.float32))
    share = rng.uniform(0.3, 1.0, size=(256, 1)) > np.linspace(0, 1, dim)[None, :]
    partner = normalise(np.where(share, bad, unit))
    spiky = unit.copy()
    spiky[:, 0] = 0.9  # far outside the fitted range: clipped to 127
    spiky = normalise(spiky)
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
    x = torch.from_numpy(normalise(np.random.default_rng(5).standard_normal((3000, 64))))
    screen = Int8Screen.fitted(x[:500]) if kind == "int8" else screening.Bf16Screen(64)
    want = screen.prepare(x)[0]
    buffer = torch.full((1000, 64), 7, dtype=screen.dtype)
    scratch = torch.full((7, 64), 3.0) if kind == "int8" else None
    for start in (0, 1000, 2000):
        block = screen.lower(x[start : start + 1000], buffer, scratch)
        assert block.data_ptr() == buffer.data_ptr() and torch.equal(block, want[start : start + 1000])


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
