"""Verification: the exact maximum pairwise cosine and nearest-neighbour cosine histogram of a bank
or of any (N, D) array, from one screened all-pairs pass in bounded memory."""

from __future__ import annotations

import time

import numpy as np
import torch

from synthface.devices import resolve_device
from synthface.identity import separation
from synthface.identity._vectors import ROW_BLOCK, check_vectors
from synthface.identity.bank import IdentityBank
from synthface.identity.separation import Verification, check_bins, summarise
from synthface.screening import Int8Screen, Screen, TileWork, full_precision_accumulation, gemm_screen


def verify(bank: IdentityBank | np.ndarray, *, bins: int = 40, device: str | torch.device | None = None) -> Verification:
    """Exact maximum pairwise cosine and nearest-neighbour cosine histogram, in bounded memory."""
    vectors = bank.vectors if isinstance(bank, IdentityBank) else bank
    return verify_vectors(vectors, bins=bins, device=device)


def verify_vectors(vectors: np.ndarray, *, bins: int = 40, device: str | torch.device | None = None) -> Verification:
    """`verify` of an (N, D) array; `bins` (0 to MAX_BINS, 0: no histogram) and `device` are checked first."""
    start = time.perf_counter()
    check_bins(bins)
    device = resolve_device(device)
    t = UnitRows(check_vectors("vectors", vectors), device)
    n = t.shape[0]
    screen = gemm_screen(device, t[:1], allow_int8=False)  # bfloat16 or none: only the dimension is read
    with full_precision_accumulation(device):
        nearest = _nearest_fp32(t) if screen is None else _nearest_screened(t, screen)
    nearest_np = nearest.cpu().numpy() if n >= 2 else np.full(n, np.nan, dtype=np.float32)
    return summarise(nearest_np, bins, time.perf_counter() - start)


class UnitRows:
    """The rows of a float32 (N, D) array as unit float32 vectors on `device`: the values
    `normalise_rows` gives, bit for bit, with no normalised copy of the whole array (memory: the
    array, on the device, and N float64 norms). Rows that normalising leaves unchanged (a saved bank's
    are) are served as they are; otherwise each block is divided by its float64 norms when asked for.
    Indexing takes what a tensor's first axis takes (a slice, an index tensor)."""

    def __init__(self, x: np.ndarray, device: torch.device):
        self.raw = torch.from_numpy(x).to(device)  # shares the array's memory on the CPU
        norms, self.unit = np.empty(x.shape[0], dtype=np.float64), True
        for i in range(0, x.shape[0], ROW_BLOCK):  # one pass: the norms, and whether dividing changes a bit
            block = x[i : i + ROW_BLOCK].astype(np.float64)
            norms[i : i + ROW_BLOCK] = np.linalg.norm(block, axis=1)
            self.unit = self.unit and np.array_equal((block / norms[i : i + ROW_BLOCK, None]).astype(np.float32),
                                                     x[i : i + ROW_BLOCK])
        self.norms = torch.from_numpy(norms).to(device)
        self.shape = self.raw.shape
        self.device = device
        self._wide: torch.Tensor | None = None

    def __getitem__(self, rows) -> torch.Tensor:
        if self.unit:
            return self.raw[rows]
        return (self.raw[rows].double() / self.norms[rows, None]).float()

    def block_into(self, start: int, out: torch.Tensor) -> torch.Tensor:
        """Rows start .. start + len(out) - 1 (fewer at the end), the values `self[start:...]` gives:
        the array's own rows when they are unit already, else written into the float32 buffer `out`
        through one reused float64 buffer (no allocation)."""
        rows = slice(start, min(start + out.shape[0], self.shape[0]))
        if self.unit:
            return self.raw[rows]
        m = rows.stop - rows.start
        if self._wide is None or self._wide.shape[0] < m:
            self._wide = torch.empty((out.shape[0], self.shape[1]), dtype=torch.float64, device=self.device)
        wide = torch.div(self.raw[rows], self.norms[rows, None], out=self._wide[:m])
        return out[:m].copy_(wide)


def _nearest_fp32(t: UnitRows) -> torch.Tensor:
    """Each row's maximum cosine to another row, in float32."""
    n, block = t.shape[0], separation.BLOCK
    nearest = torch.full((n,), -2.0, device=t.device)
    # Upper-triangular blocks only: each block updates the row maxima of both its sides.
    for i in range(0, n, block):
        a = t[i : i + block]
        for j in range(i, n, block):
            g = a @ t[j : j + block].T
            if i == j:
                g.fill_diagonal_(-2.0)
            nearest[i : i + block] = torch.maximum(nearest[i : i + block], g.amax(dim=1))
            if i != j:
                nearest[j : j + block] = torch.maximum(nearest[j : j + block], g.amax(dim=0))
    return nearest


def _nearest_screened(t: UnitRows, screen: Screen) -> torch.Tensor:
    """The same float32 nearest-neighbour cosines as `_nearest_fp32`, from one screened pass.

    The pass keeps, per row, the screened maximum over each tile of TILE columns. A tile whose
    screened maximum is below (row's screened maximum - 2 delta) holds only float32 cosines below
    (row's float32 maximum) - as its own best tile is within delta of the screened maximum - so
    only the (row, tile) pairs at or above that line are recomputed in float32. Those are kept
    as a list filtered against the running row maxima (a superset of the final ones), so memory
    is O(N x tiles near the maximum), never N x N.
    """
    n, device, block = t.shape[0], t.device, separation.BLOCK
    tile = separation.tile_width()
    worst = None  # int8: one bound from the worst vector's rounding error, both sides
    if isinstance(screen, Int8Screen):
        worst = max((float(screen.prepare(t[i : i + block])[1].max()) for i in range(0, n, block)), default=0.0)
    delta = float(screen.slack(worst, worst))
    # No screened copy of the bank: each block is rounded into one of two reused buffers (rows, columns)
    # just before its product, and every product lands in one reused gram buffer.
    work = TileWork(screen, min(n, block), min(n, block), t.shape[1], device, tile=tile)
    rows_work = TileWork(screen, 0, min(n, block), t.shape[1], device, tile=tile)
    # The normalised row block and column block (a float32 screen would use them as they are).
    unit_rows, unit_cols = (torch.empty((min(n, block), t.shape[1]), device=device) for _ in range(2))
    screened = torch.full((n,), -2.0, device=device)
    rows_l: list[torch.Tensor] = []
    tiles_l: list[torch.Tensor] = []
    vals_l: list[torch.Tensor] = []

    def keep(first_row: int, first_tile: int, tile_max: torch.Tensor) -> None:
        part = screened[first_row : first_row + tile_max.shape[0]]
        torch.maximum(part, tile_max.amax(dim=1), out=part)
        r, k = (tile_max >= (part - 2 * delta)[:, None]).nonzero(as_tuple=True)
        rows_l.append(r + first_row)
        tiles_l.append(k + first_tile)
        vals_l.append(tile_max[r, k])

    def compact() -> None:
        rows, tiles, vals = torch.cat(rows_l), torch.cat(tiles_l), torch.cat(vals_l)
        near = vals >= screened[rows] - 2 * delta
        rows_l[:], tiles_l[:], vals_l[:] = [rows[near]], [tiles[near]], [vals[near]]

    for i in range(0, n, block):
        a = rows_work.lower(t.block_into(i, unit_rows))
        for j in range(i, n, block):
            g = work.gram(a, a if i == j else work.lower(t.block_into(j, unit_cols)))
            if i == j:
                g.fill_diagonal_(screen.fill)
            bi, bj = g.shape
            pad_i, pad_j = -bi % tile, -bj % tile
            if pad_i or pad_j:
                g = torch.nn.functional.pad(g, (0, pad_j, 0, pad_i), value=screen.fill)
            keep(i, j // tile, screen.cosines(g.view(g.shape[0], -1, tile).amax(dim=2)[:bi]))
            if i != j:
                keep(j, i // tile, screen.cosines(g.view(-1, tile, g.shape[1]).amax(dim=1)[:, :bj].T))
        compact()

    nearest = torch.full((n,), -2.0, device=device)
    if n == 0:
        return nearest
    compact()
    rows, tiles = rows_l[0], tiles_l[0]
    order = torch.argsort(tiles * n + rows)
    rows, tiles = rows[order], tiles[order]
    ids, counts = torch.unique_consecutive(tiles, return_counts=True)
    for k, part in zip(ids.tolist(), torch.split(rows, counts.tolist())):
        lo = k * tile
        g = t[part] @ t[lo : lo + tile].T
        g[part[:, None] == torch.arange(lo, lo + g.shape[1], device=device)[None, :]] = -2.0
        nearest.scatter_reduce_(0, part, g.amax(dim=1), reduce="amax")
    return nearest
