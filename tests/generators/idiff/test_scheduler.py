"""IDiffDDIMScheduler / IDiffDDPMScheduler: timesteps, the published step formulas (against an
independent float64 computation), the schedule's values, and why stock diffusers schedulers differ."""

from __future__ import annotations

import math

import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.generators.idiff.schedule import ddpm_buffers
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler, IDiffDDPMScheduler, draw_noise


def f64_alpha_bars() -> list[float]:
    """alpha-bar from the betas, in float64 (betas from the same float32 linspace)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).double().tolist()
    out, acc = [], 0.0
    for b in betas:
        acc += math.log(1 - b)
        out.append(math.exp(acc))
    return out


def f64_ddim(x, eps, t, skip, eta=0.0, noise=None):
    """The documented DDIM step (IDIFF.md 'DDIM exactly as coded') in float64, written independently."""
    ab = f64_alpha_bars()
    ab_t = ab[t]
    ab_prev = ab[t - skip - 1] if t - skip >= 1 else 1.0
    x, eps = x.double(), eps.double()
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    out = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * eps
    if noise is not None:
        out = out + sigma * noise.double()
    return out, x0


def toy_eps(x, t):
    """An untrained-looking eps model: linear in x with a t-dependent offset."""
    return 0.3 * x + 0.05 * math.cos(t / 100.0)


def test_schedule_values_as_published():
    ab = IDiffDDIMScheduler().alphas_cumprod
    for i, value in ((0, 0.99990), (500, 0.077797), (980, 5.9038e-5), (999, 4.0358e-5)):
        assert float(ab[i]) == pytest.approx(value, rel=2e-5)
    assert ab.dtype == torch.float32
    assert torch.equal(ab, ddpm_buffers()["alpha_bars"])


@pytest.mark.parametrize(("steps", "first", "count"), [(50, 980, 50), (10, 900, 10), (6, 996, 7), (1, 0, 1),
                                                       (1000, 999, 1000), (3, 999, 4)])
def test_ddim_timesteps(steps, first, count):
    s = IDiffDDIMScheduler()
    s.set_timesteps(steps)
    ts = s.timesteps.tolist()
    skip = 1000 // steps
    assert ts[0] == first and ts[-1] == 0 and len(ts) == count
    assert all(a - b == skip for a, b in zip(ts, ts[1:]))


def test_ddim_six_steps_visits_seven():
    s = IDiffDDIMScheduler()
    s.set_timesteps(6)
    assert s.timesteps.tolist() == [996, 830, 664, 498, 332, 166, 0]


@pytest.mark.parametrize("steps", [0, 1001, 2.5, True])
def test_ddim_refuses_bad_step_counts(steps):
    with pytest.raises(InvalidInputError, match="num_inference_steps"):
        IDiffDDIMScheduler().set_timesteps(steps)


@pytest.mark.parametrize("t", [980, 500, 40, 20, 0])
def test_ddim_step_matches_float64_formula(t):
    s = IDiffDDIMScheduler()
    s.set_timesteps(50)
    g = torch.Generator().manual_seed(t)
    x, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    out = s.step(eps, t, x)
    want, want_x0 = f64_ddim(x, eps, t, 20)
    assert torch.allclose(out.prev_sample.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert torch.allclose(out.pred_original_sample.double(), want_x0, rtol=1e-5, atol=1e-5 * float(want_x0.abs().max()))


def test_ddim_at_skip_lands_on_x0_and_last_step_reuses_it():
    s = IDiffDDIMScheduler()
    s.set_timesteps(50)
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    for t in (20, 0):  # ab_prev = 1 at t = skip (shifted table: alphas_prev[0] = 1) and at t = 0
        out = s.step(eps, t, x)
        assert float(s.alpha_bar_prev(t)) == 1.0
        assert torch.allclose(out.prev_sample, out.pred_original_sample, atol=1e-6)
    assert float(s.alpha_bar_prev(40)) == float(s.alphas_cumprod[19])  # t - skip - 1, not t - skip


def test_ddim_eta_noise_from_given_or_global_generator():
    s = IDiffDDIMScheduler()
    s.set_timesteps(10)
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    got = s.step(eps, 500, x, eta=0.7, generator=torch.Generator().manual_seed(5)).prev_sample
    want, _ = f64_ddim(x, eps, 500, 100, eta=0.7, noise=noise)
    assert torch.allclose(got.double(), want, atol=1e-5)
    torch.manual_seed(11)
    got_global = s.step(eps, 500, x, eta=0.7).prev_sample
    torch.manual_seed(11)
    want_global, _ = f64_ddim(x, eps, 500, 100, eta=0.7, noise=torch.randn(2, 3, 4, 4))
    assert torch.allclose(got_global.double(), want_global, atol=1e-5)
    per_image = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    got_rows = s.step(eps, 500, x, eta=0.7, generator=per_image).prev_sample
    rows = torch.stack([torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(k)) for k in (1, 2)])
    want_rows, _ = f64_ddim(x, eps, 500, 100, eta=0.7, noise=rows)
    assert torch.allclose(got_rows.double(), want_rows, atol=1e-5)


def test_ddim_does_not_clip():
    s = IDiffDDIMScheduler()
    s.set_timesteps(50)
    x = torch.full((1, 3, 2, 2), 50.0)
    out = s.step(torch.zeros_like(x), 980, x)
    assert float(out.pred_original_sample.max()) > 1000  # 50 / sqrt(ab[980]) ~ 6500, unclipped


def run_loop(scheduler, steps, x):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(toy_eps(x, int(t)), t, x).prev_sample
    return x


def test_stock_diffusers_ddim_differs_from_the_published_rule():
    """The published code reads ab_prev one entry early; stock DDIMScheduler (same timesteps) does
    not. IDIFF.md records the difference; this test keeps anyone from swapping the port for it."""
    from diffusers import DDIMScheduler

    stock = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True, clip_sample=False)
    ours = IDiffDDIMScheduler()
    stock.set_timesteps(50)
    ours.set_timesteps(50)
    assert stock.timesteps.tolist() == ours.timesteps.tolist()  # the same visits ...
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    stock_step = stock.step(eps, 500, x).prev_sample
    ours_step = ours.step(eps, 500, x).prev_sample
    # ... but stock uses ab[t - skip] where the published code uses ab[t - skip - 1]:
    ab = stock.alphas_cumprod
    x0 = (x - (1 - ab[500]).sqrt() * eps) / ab[500].sqrt()
    assert torch.allclose(stock_step, ab[480].sqrt() * x0 + (1 - ab[480]).sqrt() * eps, atol=1e-4)
    assert float((stock_step - ours_step).abs().max()) > 1e-3
    a = run_loop(stock, 50, x.clone())
    b = run_loop(ours, 50, x.clone())
    assert float((a - b).abs().max()) > 0.01 * float(b.abs().max())


def test_ddpm_timesteps_and_refusal():
    s = IDiffDDPMScheduler()
    s.set_timesteps(None)
    assert s.timesteps.tolist() == list(range(999, -1, -1))
    s.set_timesteps(1000)
    assert len(s.timesteps) == 1000
    with pytest.raises(InvalidInputError, match="all 1000"):
        s.set_timesteps(50)


@pytest.mark.parametrize("i", [999, 500, 2, 1, 0])
def test_ddpm_step_matches_float64_formula(i):
    s = IDiffDDPMScheduler()
    g = torch.Generator().manual_seed(i)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(100))
    out = s.step(eps, i, x, generator=torch.Generator().manual_seed(100)).prev_sample
    beta = float(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)[i])
    ab = f64_alpha_bars()[i]
    want = (x.double() - eps.double() * beta / math.sqrt(1 - ab)) / math.sqrt(1 - beta)
    if i > 1:
        want = want + math.sqrt(beta) * z.double()
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)


def test_ddpm_no_noise_at_one_and_zero():
    s = IDiffDDPMScheduler()
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    for i in (1, 0):
        torch.manual_seed(0)
        before = torch.randn(1)
        torch.manual_seed(0)
        a = s.step(eps, i, x).prev_sample
        assert torch.equal(torch.randn(1), before)  # nothing drawn from the global generator
        b = s.step(eps, i, x, generator=torch.Generator().manual_seed(9)).prev_sample
        assert torch.equal(a, b)
    assert s.draws_noise(2) and not s.draws_noise(1) and not s.draws_noise(0)


def test_draw_noise_modes():
    torch.manual_seed(4)
    want = torch.randn(2, 3, 2, 2)
    torch.manual_seed(4)
    assert torch.equal(draw_noise((2, 3, 2, 2)), want)
    rows = draw_noise((2, 3, 2, 2), [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    assert torch.equal(rows[1], torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(8)))
    with pytest.raises(InvalidInputError, match="one generator per image"):
        draw_noise((3, 1), [torch.Generator()])


def test_schedulers_round_trip_config(tmp_path):
    for cls in (IDiffDDIMScheduler, IDiffDDPMScheduler):
        cls().save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert type(loaded) is cls and loaded.config.num_train_timesteps == 1000
        assert torch.equal(loaded.alphas_cumprod, ddpm_buffers()["alpha_bars"])
    ddpm = IDiffDDPMScheduler.from_config(IDiffDDIMScheduler().config)
    assert isinstance(ddpm, IDiffDDPMScheduler)
