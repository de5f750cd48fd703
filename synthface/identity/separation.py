"""Separation of a bank: its statistics (`Verification`: exact max pairwise cosine, each vector's
nearest-neighbour cosine, a histogram) and the blocked, screened checks that keep and record it
while sampling (`BankState`, `reject_clashes`, `greedy_keep_in_batch`).

Every check is a blocked matrix product (never an N x N matrix) screened in low precision; only
cosines within the screen's bound of a decision are recomputed in float32, so every decision and
every recorded cosine is the float32 one. The block sizes below are read at call time
(`separation.BLOCK`), so one setting holds for sampling, verification and feasibility alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthface.errors import InvalidInputError
from synthface.screening import Int8Screen, Screen, Screened, TileWork, bf16_round

# Within-batch greedy costs N x batch x D in all, against N^2 D / 2 for the bank checks: 4096
# keeps it under a tenth at 100K while the GEMMs stay large enough to run at full speed.
CANDIDATE_BATCH = 4096
BLOCK = 8192  # bank rows per screened product
WITHIN_ROWS = 1024  # candidate rows per gram of the within-batch check (16 MiB in float32)
TILE = 64  # columns per tile whose screened maximum verification keeps for its exact recheck
MAX_BINS = 10_000  # histogram bins of nearest-neighbour cosines (float32 cosines resolve ~1e-4 anyway)


def tile_width() -> int:
    """Columns per tile of the screened passes: TILE, or less so that tiles never straddle a block."""
    return math.gcd(TILE, BLOCK)


@dataclass(frozen=True)
class Verification:
    """Exact separation statistics of a bank."""

    count: int
    max_cos: float
    nearest_cos: np.ndarray  # (N,) each vector's cosine to its nearest neighbour
    histogram: np.ndarray  # counts of nearest_cos over `edges`
    edges: np.ndarray
    seconds: float


def check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 0 <= bins <= MAX_BINS:
        raise InvalidInputError(
            f"bins (--bins) must be an integer from 0 (no histogram) to {MAX_BINS}, got {bins!r}."
        )


def summarise(nearest: np.ndarray, bins: int, seconds: float) -> Verification:
    """Max and histogram of nearest-neighbour cosines (NaN max for fewer than two vectors)."""
    n = nearest.shape[0]
    max_cos = float(np.max(nearest)) if n >= 2 else float("nan")
    if bins and n >= 2:
        hist, edges = np.histogram(nearest, bins=bins)
    else:
        hist, edges = np.zeros(0, dtype=np.int64), np.zeros(0)
    return Verification(n, max_cos, nearest, hist, edges, seconds)


class BankState:
    """The accepted vectors so far with their exact nearest-neighbour cosines (and, for int8, each
    vector's rounding error), in buffers allocated once. There is no screened copy of the bank: each
    block is rounded to the screen's form into one reused buffer just before its product, with the
    same values a whole screened copy would hold, so decisions are unchanged. Memory is the float32
    bank, N x (4 + 8 for int8) bytes and O(batch x block) work space, never N x N and no second copy."""

    def __init__(self, vectors: torch.Tensor, nearest: torch.Tensor):
        self.vectors = vectors  # (n, D) float32
        self.nearest = nearest  # (n,) float32, -2 while a vector has no neighbour yet
        self.count = 0
        self.screen: Screen | None = None
        self.err: torch.Tensor | None = None  # (n,) float64 int8 rounding errors, int8 screen only
        self.work: TileWork | None = None
        self.err_max = 0.0

    @classmethod
    def allocate(cls, n: int, dim: int, device: torch.device) -> BankState:
        return cls(torch.empty((n, dim), dtype=torch.float32, device=device),
                   torch.full((n,), -2.0, dtype=torch.float32, device=device))

    def use_screen(self, screen: Screen, excluded: int) -> None:
        """Screen the bank with `screen` from now on; work space fits a candidate batch against a block of
        the bank or of the `excluded` vectors."""
        n, dim = self.vectors.shape
        self.screen = screen
        self.work = TileWork(screen, CANDIDATE_BATCH, min(BLOCK, max(n, excluded)), dim, self.vectors.device,
                             tile=tile_width())
        if isinstance(screen, Int8Screen):
            self.err = torch.empty(n, dtype=torch.float64, device=self.vectors.device)
            for start in range(0, self.count, BLOCK):  # a resumed bank's errors, a block at a time
                stop = min(start + BLOCK, self.count)
                self.err[start:stop] = screen.prepare(self.vectors[start:stop])[1]
            if self.count:
                self.err_max = float(self.err[: self.count].max())

    def restore(self, vectors: np.ndarray, nearest: np.ndarray) -> None:
        count = vectors.shape[0]
        self.vectors[:count] = torch.from_numpy(vectors)
        self.nearest[:count] = torch.from_numpy(nearest)
        self.count = count

    def append(self, new: torch.Tensor, new_err: torch.Tensor | None) -> None:
        """Add the vectors `new` (with their int8 rounding errors `new_err`) to the bank."""
        at, k = self.count, new.shape[0]
        self.vectors[at : at + k] = new
        if new_err is not None and k:
            self.err[at : at + k] = new_err
            self.err_max = max(self.err_max, float(new_err.max()))
        self.count += k

    def slack(self, cand_s: Screened | None = None) -> float:
        """One screen bound valid for every pair of bank vectors and candidates in `cand_s`."""
        worst = self.err_max if cand_s is None or cand_s.err is None else max(self.err_max, float(cand_s.err.max()))
        return float(self.screen.slack(worst, worst))

    def near_log(self, batch: int, cand_s: Screened) -> NearLog:
        return NearLog(self, batch, self.slack(cand_s))

    def record_within(self, before: int, low: torch.Tensor) -> None:
        """Exact nearest-neighbour cosines among the vectors accepted in this batch (rows before..count,
        screened form `low`), screened like the bank checks: only tiles that can hold a row's maximum,
        above its cosine to the earlier bank, are recomputed in float32."""
        stop, slack = self.count, self.slack()
        if stop - before < 2:
            return
        rows, tiles = [], []
        best = torch.full((stop - before,), -2.0, device=self.vectors.device)
        for start in range(before, stop, BLOCK):
            end = min(start + BLOCK, stop)
            g = self.work.gram(low, low[start - before : end - before])
            g.diagonal(offset=before - start).fill_(self.screen.fill)
            tile_max = self.work.tile_max(g)
            torch.maximum(best, tile_max.amax(dim=1), out=best)
            r, k = (tile_max >= torch.maximum(self.nearest[before:stop] - slack, best - 2 * slack)[:, None]).nonzero(
                as_tuple=True)
            rows.append(r + before)
            tiles.append(k + (start - before) // self.work.tile)
        _exact_tiles(self, torch.cat(rows), torch.cat(tiles), before, stop, columns=False)


class NearLog:
    """(candidate, bank tile) pairs of one batch whose exact cosines can matter for a nearest neighbour.

    A tile's exact maximum is within `slack` of its screened one, so a tile can hold a candidate's
    exact maximum only if its screened maximum is at least (candidate's screened maximum - 2 slack),
    and can hold a cosine above a bank vector's current nearest-neighbour cosine only if it is at
    least (the smallest such cosine in the tile - slack). Pairs meeting neither are dropped as the
    blocks go by; `settle` recomputes the rest of the accepted candidates' pairs in float32.
    """

    def __init__(self, bank: BankState, batch: int, slack: float):
        self.bank, self.slack = bank, slack
        tile, count = bank.work.tile, bank.count
        near = bank.nearest[:count]
        full = count // tile * tile
        parts = [near[:full].view(-1, tile).amin(dim=1)] + ([near[full:].amin(dim=0, keepdim=True)] if full < count else [])
        self.col_ref = torch.cat(parts) - slack
        self.best = torch.full((batch,), -2.0, device=near.device)
        self.rows: list[torch.Tensor] = []
        self.tiles: list[torch.Tensor] = []
        self.vals: list[torch.Tensor] = []

    def add(self, rows: torch.Tensor, first_tile: int, tile_max: torch.Tensor, row_max: torch.Tensor) -> None:
        best = torch.maximum(self.best[rows], row_max)
        self.best[rows] = best
        refs = torch.minimum((best - 2 * self.slack)[:, None], self.col_ref[first_tile : first_tile + tile_max.shape[1]])
        r, k = (tile_max >= refs).nonzero(as_tuple=True)
        self.rows.append(rows[r])
        self.tiles.append(k + first_tile)
        self.vals.append(tile_max[r, k])
        rows_, tiles_, vals_ = torch.cat(self.rows), torch.cat(self.tiles), torch.cat(self.vals)
        keep = vals_ >= torch.minimum(self.best[rows_] - 2 * self.slack, self.col_ref[tiles_])
        self.rows[:], self.tiles[:], self.vals[:] = [rows_[keep]], [tiles_[keep]], [vals_[keep]]

    def settle(self, chosen: torch.Tensor, before: int) -> None:
        """Exact nearest-neighbour updates for the accepted candidates `chosen` (now bank rows
        before, before + 1, ...) against the earlier bank, on both sides of each pair."""
        if not self.rows:
            return
        position = torch.full_like(self.best, -1, dtype=torch.long)
        position[chosen] = torch.arange(before, before + chosen.numel(), device=chosen.device)
        rows, tiles = position[self.rows[0]], self.tiles[0]
        accepted = rows >= 0
        _exact_tiles(self.bank, rows[accepted], tiles[accepted], 0, before, columns=True)


def _exact_tiles(bank: BankState, rows: torch.Tensor, tiles: torch.Tensor, base: int, stop: int, *, columns: bool) -> None:
    """Fold the float32 cosines of bank rows `rows` with the bank vectors of tile `tiles` (columns
    base + tile x TILE onwards, below `stop`) into the nearest-neighbour cosines: the rows' own,
    and with `columns` the tile vectors' too. A row is never compared with itself."""
    if rows.numel() == 0:
        return
    tile, vectors, nearest = bank.work.tile, bank.vectors, bank.nearest
    order = torch.argsort(tiles * vectors.shape[0] + rows)
    rows, tiles = rows[order], tiles[order]
    ids, counts = torch.unique_consecutive(tiles, return_counts=True)
    for k, part in zip(ids.tolist(), torch.split(rows, counts.tolist())):
        lo = base + k * tile
        hi = min(lo + tile, stop)
        g = vectors[part] @ vectors[lo:hi].T
        g[part[:, None] == torch.arange(lo, hi, device=g.device)[None, :]] = -2.0
        nearest.scatter_reduce_(0, part, g.amax(dim=1), reduce="amax")
        if columns:
            torch.maximum(nearest[lo:hi], g.amax(dim=0), out=nearest[lo:hi])


def reject_clashes(
    cand: torch.Tensor, cand_s: Screened, bank: torch.Tensor, bank_err: torch.Tensor | None, count: int,
    limit: float, ok: torch.Tensor, work: TileWork, log: NearLog | None = None,
) -> None:
    """Clear `ok` for rows of `cand` with a float32 cosine > `limit` to one of the first `count`
    rows of `bank` (int8 rounding errors `bank_err`), and hand each block's tile maxima to `log`.

    The same decisions as comparing float32 cosines with `limit`, from a screened pass: per bank
    block, a row whose screened maximum exceeds limit + slack certainly clashes, one below
    limit - slack certainly does not (slack: the screen's error bound for that row and block),
    and only rows in between are recomputed in float32 against that block. Rows already
    rejected are skipped. Each bank block is rounded to the screen's form in `work`'s block buffer
    just before its product (O(block x D), against the product's O(batch x block x D)).
    """
    screen = cand_s.screen
    for start in range(0, count, BLOCK):
        stop = min(start + BLOCK, count)
        rows = ok.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        sub = cand_s if rows.numel() == ok.numel() else cand_s.take(rows)
        tile_max = work.tile_max(work.gram(sub.low, work.lower(bank[start:stop])))
        screened = tile_max.amax(dim=1)
        col_err = None if bank_err is None else float(bank_err[start:stop].max())
        slack = screen.slack(sub.err, col_err)
        reject = screened > limit + slack
        band = (screened > limit - slack) & ~reject
        if bool(band.any()):
            recheck = rows[band]
            exact = (cand[recheck] @ bank[start:stop].T).amax(dim=1)
            reject[band] = exact > limit
        if log is not None:
            log.add(rows, start // work.tile, tile_max, screened)
        ok[rows[reject]] = False


def greedy_keep_in_batch(
    cand: torch.Tensor, limit: float, cand_lp: torch.Tensor | None = None, delta: float = 0.0
) -> torch.Tensor:
    """Greedy acceptance in order inside one batch: keep i unless it clashes with a kept j < i.

    With `cand_lp` the clash matrix comes from a bfloat16 gram, and the rows with any entry
    within `delta` of `limit` are recomputed in float32, so it equals the float32 one. Grams are
    computed WITHIN_ROWS rows at a time, against the earlier candidates only.
    """
    m = cand.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.bool, device=cand.device)
    if cand_lp is None:
        rows_l, cols_l = [], []
        for lo in range(0, m, WITHIN_ROWS):
            hi = min(lo + WITHIN_ROWS, m)
            r, c = (cand[lo:hi] @ cand[:hi].T > limit).nonzero(as_tuple=True)
            earlier = c < r + lo
            rows_l.append(r[earlier] + lo)
            cols_l.append(c[earlier])
        rows, cols = (torch.cat(t).cpu().numpy() for t in (rows_l, cols_l))
    else:
        rows, cols = _screened_clashes(cand, cand_lp, limit, delta)
    keep = torch.ones(m, dtype=torch.bool)
    if rows.size:
        # Only candidates with an earlier clash need the sequential rule; others are kept outright.
        keep_np = keep.numpy()
        splits = np.flatnonzero(np.diff(rows)) + 1
        for row, earlier in zip(rows[np.r_[0, splits]], np.split(cols, splits)):
            keep_np[row] = not keep_np[earlier].any()
    return keep.to(cand.device)


def _screened_clashes(
    cand: torch.Tensor, cand_lp: torch.Tensor, limit: float, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j), j < i, with float32 cosine > limit, sorted by i then j, from a bfloat16 gram.

    Entries screened at or below limit - delta cannot clash; rows with an entry between limit -
    delta and limit + delta are recomputed in float32; in the others every screened entry above
    limit + delta is a clash. Comparisons happen in bfloat16 against thresholds rounded outwards
    to bfloat16 values, so no full-size float copy of the gram is made.
    """
    m = cand.shape[0]
    low, high = bf16_round(limit - delta, up=False), bf16_round(limit + delta, up=True)
    r_l, c_l, band_l = [], [], []
    for lo in range(0, m, WITHIN_ROWS):  # rows lo..hi against the candidates before them
        hi = min(lo + WITHIN_ROWS, m)
        screened = cand_lp[lo:hi] @ cand_lp[:hi].T
        r, c = (screened > low).nonzero(as_tuple=True)
        earlier = c < r + lo
        r, c = r[earlier], c[earlier]
        band_l.append(screened[r, c] <= high)
        r_l.append(r + lo)
        c_l.append(c)
    r, c, band = torch.cat(r_l), torch.cat(c_l), torch.cat(band_l)
    band_row = torch.zeros(m, dtype=torch.bool, device=cand.device)
    band_row[r[band]] = True
    certain = ~band_row[r]
    rows_l, cols_l = [r[certain]], [c[certain]]
    recheck = band_row.nonzero().squeeze(1)
    cols = torch.arange(m, device=cand.device)
    for lo in range(0, recheck.numel(), 2048):
        part = recheck[lo : lo + 2048]
        i, j = ((cand[part] @ cand.T > limit) & (cols[None, :] < part[:, None])).nonzero(as_tuple=True)
        rows_l.append(part[i])
        cols_l.append(j)
    rows, cols = torch.cat(rows_l), torch.cat(cols_l)
    order = torch.argsort(rows * m + cols)
    return rows[order].cpu().numpy(), cols[order].cpu().numpy()
