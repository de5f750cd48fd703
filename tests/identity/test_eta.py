"""The ETA model of a sampling."""

from __future__ import annotations

import numpy as np

from synthface.identity.eta import ETA_MIN_BATCHES, ETA_RECENT, Eta


def eta_trace(n, batch, seconds_of, per_id_of):
    """A sampler's per-batch record: batch k against a bank of c costs seconds_of(k, c) and needs
    per_id_of(c) candidates per accepted identity (the last batch capped at n). Returns the rows
    for `Eta.add` and the times after each batch."""
    rows, times, count, k = [], [], 0, 0
    while count < n:
        accepted = min(int(batch / per_id_of(count)), n - count)
        rows.append((batch, count, accepted, seconds_of(k, count)))
        times.append((times[-1] if times else 0.0) + rows[-1][3])
        count, k = count + accepted, k + 1
    return rows, times


def worst_eta_error(n, rows, times, budget=10**9):
    """The largest relative error of the ETAs an `Eta` fed `rows` reports after the first tenth of the
    run; the first one must come before a third of the run."""
    eta, worst, drawn, first = Eta(n), 0.0, 0, None
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
    eta = Eta(n)
    for i, row in enumerate(rows[:-1]):
        eta.add(*row)
        if i >= step + ETA_RECENT:
            left = times[-1] - times[i]
            assert abs(eta.remaining(row[1] + row[2], batch, 10**9) - left) < 0.03 * left


def test_eta_is_none_until_a_few_batches_are_timed_or_when_the_budget_cannot_reach_n():
    eta = Eta(10_000)
    eta.add(1000, 0, 1000, 0.5)
    for before in range(1000, 1000 + 500 * ETA_MIN_BATCHES, 500):
        assert eta.remaining(before, 1000, 10**6) is None  # the warm-up batch and too few others
        eta.add(1000, before, 500, 0.1)
    assert eta.remaining(4000, 1000, 10**6) > 0
    assert eta.remaining(4000, 1000, 3000) is None  # 6000 more identities at 1 in 2 or worse: 12000+ draws
    assert eta.remaining(10_000, 1000, 0) == 0.0
