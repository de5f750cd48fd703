"""The time left of a sampling (`Eta`), from the work still to do and the observed speed."""

from __future__ import annotations

import numpy as np


class Eta:
    """Time left, from the work still to do and the observed speed, not a straight line.

    Each batch of B candidates against a bank of c vectors costs B (alpha c + beta) seconds: alpha
    per candidate x bank-vector product screened (the bulk of the work), beta per candidate for
    drawing it and checking it within its batch. The shape, alpha and beta, is a Theil-Sen line
    (medians of pairwise slopes, so batches slowed by another process do not bend it) through the
    per-candidate seconds of every batch but the first (which carries warm-up costs), at most
    ETA_FIT_POINTS of them evenly spaced. The level follows the machine as it is now: the line is
    scaled by the median ratio of observed to modelled seconds over the last ETA_RECENT batches, so
    a lasting change of speed (another job, a slower memory regime at a large bank) moves the
    estimate within a few batches instead of bending the whole line. The candidates needed per
    accepted identity, 1 / acceptance, grow with the bank (each kept vector removes a cap of the
    prior); they are extrapolated by a least-squares line in c through the batches of the more
    recent half of the bank's growth. The estimate steps that model forward batch by batch, within
    the draw budget, until n is reached; it is None until ETA_MIN_BATCHES batches after the first
    are timed, and where the budget cannot reach n. Measured with `benchmarks/bench_identity.py
    --eta-trace` (see the README's Performance table).
    """

    def __init__(self, n: int):
        self.n = n
        self.rows: list[tuple[int, int, int, float]] = []  # (batch, bank size before, accepted, seconds)
        self.elapsed = 0.0

    def add(self, batch: int, before: int, accepted: int, seconds: float) -> None:
        self.rows.append((batch, before, accepted, seconds))
        self.elapsed += seconds

    def remaining(self, count: int, batch: int, draws_left: int) -> float | None:
        """Seconds until `count` identities become n, drawing batches of `batch` candidates (at most `draws_left`)."""
        if count >= self.n:
            return 0.0
        timed = self.rows[1:]
        if len(timed) < ETA_MIN_BATCHES:
            return None
        picked = np.unique(np.linspace(0, len(timed) - 1, min(len(timed), ETA_FIT_POINTS)).round().astype(int))
        batches, before, _, seconds = _columns([timed[i] for i in picked])
        alpha, beta = _theil_sen(before, seconds / batches)
        batches, before, _, seconds = _columns(timed[-ETA_RECENT:])
        modelled = alpha * before + beta
        usable = (modelled > 0) & (seconds > 0)  # a batch below the timer's resolution says nothing of the speed
        scale = float(np.median(seconds[usable] / batches[usable] / modelled[usable])) if usable.any() else 1.0
        growth = [row for row in timed if row[1] >= count / 2][-ETA_WINDOW:]
        batches, before, accepted, _ = _columns(growth if len(growth) >= ETA_MIN_BATCHES else timed[-ETA_MIN_BATCHES:])
        mid = before + accepted / 2  # the bank grows within a batch
        per_id = batches / np.maximum(accepted, 1.0)
        slope = max(float(np.polyfit(mid, per_id, 1)[0]), 0.0) if np.ptp(mid) > 0 else 0.0
        level = float(per_id.mean() - slope * mid.mean())  # the line through the window's centre of mass
        total, c = 0.0, float(count)
        while c < self.n:
            if draws_left < batch:
                return None
            total += scale * batch * (alpha * c + beta)
            c += batch / max(1.0, level + slope * (c + batch / 2))
            draws_left -= batch
        return total


def _columns(rows: list[tuple[int, int, int, float]]) -> tuple[np.ndarray, ...]:
    """(batch, before, accepted, seconds) rows as four float64 columns."""
    return tuple(np.array(col, dtype=np.float64) for col in zip(*rows))


ETA_WINDOW = 128  # at most this many batches of the recent half of the growth fit the acceptance line
ETA_MIN_BATCHES = 6  # fewer leave the medians at the mercy of one or two slowed batches
ETA_FIT_POINTS = 256  # at most this many batches, evenly spaced, fit the cost line (Theil-Sen is quadratic)
ETA_RECENT = 8  # batches whose observed / modelled seconds set the current speed


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of y ~ slope x + intercept, both non-negative: the median of the slopes
    between all pairs of points with distinct x (0 if none), then the median intercept."""
    i, j = np.triu_indices(x.size, k=1)
    dx = x[j] - x[i]
    distinct = dx != 0
    slope = max(float(np.median((y[j] - y[i])[distinct] / dx[distinct])), 0.0) if distinct.any() else 0.0
    return slope, max(float(np.median(y - slope * x)), 0.0)
