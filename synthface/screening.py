"""Screened cosines: cheap low-precision GEMMs with a proven error bound, for exact decisions.

Identity sampling and verification spend nearly all their time in all-pairs cosine GEMMs. Most
cosines are far from any threshold, so they are first computed in bfloat16 or int8, and only the
ones that land within the bound of a decision are recomputed in float32: every decision and every
reported cosine is still the float32 one. Which screen runs changes speed, never results.

- `Bf16Screen`: bfloat16 operands, float32 accumulation; a fixed bound per dimension
  (`screen_delta`). 2-3x float32 on CPUs with avx512_bf16 or AMX, and on CUDA tensor cores.
- `Int8Screen`: operands rounded to int8 on one scale, products summed exactly in int32; the bound
  comes from each vector's own rounding error, so it is per row (about 0.02 for 512-d vectors).
  About 1.25x bfloat16 again on large GEMMs on CPUs with VNNI; used by the sampler on CPU when a
  one-off probe shows it pays. Verification keeps bfloat16: its tighter bound means fewer rechecks.
- `Float32Screen`: no screening (bound 0), so callers run one code path whatever the device.
- `Screened` (operands in a screen's form with their rounding errors) and `TileWork` (reused gram,
  tile-maxima and block buffers) are the pieces every blocked, screened all-pairs pass shares.

Whether bfloat16 or int8 GEMMs pay is a property of the machine, so a CPU's timed probe runs once
per machine and torch version and its answer is cached in the user's cache folder
(`$XDG_CACHE_HOME/synthface`, else `~/.cache/synthface`); a cache that cannot be read or written
only means probing again.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# None: screen where a one-off probe shows it pays (bfloat16 always on CUDA with bf16 support);
# False: plain float32 throughout (the reference the tests compare against); True: always screen.
SCREEN: bool | None = None
# Int8 screening of the big GEMMs: None: on CPU where the probe shows it beats the alternative;
# False: never; True: whenever screening is on.
INT8: bool | None = None

_BF16_FAST: dict[str, bool] = {}
_INT8_FAST: dict[str, bool] = {}
_U = 2.0**-8  # unit roundoff of bfloat16 (8 significand bits, round to nearest even)
# Unit vectors in float32 have norms within ~1e-7 of 1; 1e-5 leaves ample room.
_NORM_SLACK = 1e-5
# Int8 headroom: the scale maps 1.25x the largest coordinate seen when fitting to 127, so later
# vectors rarely clip; a clipped coordinate only enlarges that vector's own error term.
_INT8_HEADROOM = 1.25
_INT8_CHUNK = 4096  # rows rounded to int8 at a time (float32/float64 temporaries of this many rows)
LOWER_ROWS = 1024  # rows rounded to int8 at a time through TileWork's float32 scratch buffer


def screen_delta(dim: int) -> float:
    """A bound on |cosine from the bfloat16 GEMM - cosine from the float32 GEMM| for unit vectors.

    For unit x, y (float32, norms 1 within 1e-6) of dimension D:
    - rounding each element to bfloat16 changes it by a relative u = 2^-8 at most, so each product
      x_i y_i moves by at most (2u + u^2)|x_i y_i|, and in all by (2u + u^2) sum|x_i y_i| <=
      (2u + u^2) ||x|| ||y|| = 0.00782 (Cauchy-Schwarz);
    - the bfloat16 GEMM multiplies exactly and accumulates in float32 (oneDNN, cuBLAS with
      reduced-precision reductions switched off, see `full_precision_accumulation`): at most
      D 2^-24 sum|x_i y_i| in any summation order, and the float32 GEMM we compare with errs by
      as much again (3e-5 each for D = 512);
    - the result is rounded to bfloat16: at most u times its magnitude (<= 1 + the above), 0.0039.
    That sums to 0.0118 for D = 512; the 25 % on top covers norms that are 1 only to float32
    precision and thresholds rounded to float32. tests/identity/test_screening.py checks it against
    vectors built to round badly. Callers only ever use it as "screened value more than delta
    above/below x means float32 value above/below x", so a larger delta costs rechecks, never
    correctness.
    """
    first = 2 * _U + _U * _U
    accumulate = dim * 2.0**-24 * (1 + first)
    output = _U * (1 + first + accumulate)
    return 1.25 * (first + 2 * accumulate + output)


class Bf16Screen:
    """bfloat16 operands; one bound for every pair (`screen_delta`)."""

    name = "bfloat16"
    dtype = torch.bfloat16
    out_dtype = torch.bfloat16
    fill = -2.0  # below every cosine

    def __init__(self, dim: int):
        self.delta = screen_delta(dim)

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.to(torch.bfloat16), None

    def lower(self, x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """`x` in this screen's low-precision form, the values of `prepare(x)[0]`, written into `out`."""
        return out.copy_(x)

    def gram(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.matmul(a, b.T, out=out)

    def cosines(self, g: torch.Tensor) -> torch.Tensor:
        return g.float()

    def slack(self, row_err: torch.Tensor | None, col_err_max: float | None) -> float:
        return self.delta


class Float32Screen(Bf16Screen):
    """No screening: float32 operands and products, bound 0 (every screened value is the float32 one)."""

    name = "float32"
    dtype = torch.float32
    out_dtype = torch.float32

    def __init__(self, dim: int):
        self.delta = 0.0

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None

    def cosines(self, g: torch.Tensor) -> torch.Tensor:
        return g


@dataclass(frozen=True)
class Int8Screen:
    """int8 operands q = round(x * scale), clipped to +-127; exact int32 sums.

    With x = q/scale + e (e: the vector's rounding error, its norm known exactly per vector), for
    unit x, y: x.y - (q_x/scale).(q_y/scale) = (q_x/scale).e_y + e_x.y, so the screened cosine is
    within (1 + |e_x|)|e_y| + |e_x| of the true one (Cauchy-Schwarz, |q_x/scale| <= 1 + |e_x|);
    the float32 GEMM we match errs from the true value by at most D 2^-24 (doubled here), and
    turning the exact int32 sum into a float32 cosine by 2^-24 relative. For 512-d isotropic
    vectors |e| is about 0.01, so the bound is about 0.02 per pair.
    """

    scale: float
    dim: int
    name = "int8"
    dtype = torch.int8
    out_dtype = torch.int32
    fill = torch.iinfo(torch.int32).min  # below every product

    @classmethod
    def fitted(cls, x: torch.Tensor, headroom: float = _INT8_HEADROOM) -> Int8Screen:
        """A scale that maps `headroom` times the largest coordinate of `x` to 127."""
        largest = float(x.abs().max()) if x.numel() else 1.0
        return cls(scale=127.0 / (headroom * max(largest, 1e-12)), dim=int(x.shape[1]))

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` rounded to int8 (`lower`) and each vector's rounding error |x - q / scale| (float64)."""
        low = torch.empty(x.shape, dtype=torch.int8, device=x.device)
        err = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        scratch = torch.empty((min(x.shape[0], _INT8_CHUNK), x.shape[1]), dtype=torch.float32, device=x.device)
        for start in range(0, x.shape[0], _INT8_CHUNK):  # float64 temporaries stay small
            part = x[start : start + _INT8_CHUNK]
            q = self.lower(part, low[start : start + _INT8_CHUNK], scratch)
            err[start : start + _INT8_CHUNK] = torch.linalg.vector_norm(part.double() - q.double() / self.scale, dim=1)
        return low, err

    def lower(self, x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        """q = round(x * scale) clipped to +-127, written into `out` (int8) through `scratch` (float32,
        any number of rows: `x` is rounded that many rows at a time)."""
        step = scratch.shape[0]
        for start in range(0, x.shape[0], step):
            part = x[start : start + step]
            q = torch.mul(part, self.scale, out=scratch[: part.shape[0]]).round_().clamp_(-127, 127)
            out[start : start + step].copy_(q)
        return out

    def gram(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch._int_mm(a, b.T) if out is None else torch._int_mm(a, b.T, out=out)

    def cosines(self, g: torch.Tensor) -> torch.Tensor:
        return (g.double() / self.scale**2).float()

    def slack(self, row_err: torch.Tensor | float, col_err_max: float) -> torch.Tensor | float:
        gemm = self.dim * 2.0**-23 + 1e-6
        return 1.01 * ((1 + _NORM_SLACK + row_err) * col_err_max + row_err * (1 + _NORM_SLACK)) + gemm


Screen = Bf16Screen | Int8Screen | Float32Screen


@dataclass
class Screened:
    """Vectors in a screen's low-precision form, with each vector's rounding error (int8)."""

    screen: Screen
    low: torch.Tensor
    err: torch.Tensor | None

    @classmethod
    def of(cls, screen: Screen, x: torch.Tensor) -> Screened:
        return cls(screen, *screen.prepare(x))

    def take(self, index: torch.Tensor) -> Screened:
        return Screened(self.screen, self.low[index], None if self.err is None else self.err[index])


class TileWork:
    """Work space reused by every block: a gram buffer for `rows` x `cols`, its maxima over tiles of
    `tile` columns, and a buffer for one block of `cols` vectors in the screen's low-precision form."""

    def __init__(self, screen: Screen, rows: int, cols: int, dim: int, device: torch.device, *, tile: int):
        self.screen = screen
        self.tile = tile
        self.gram_buf = torch.empty(rows * cols, dtype=screen.out_dtype, device=device)
        self.tile_buf = torch.empty(rows * -(-cols // self.tile), dtype=screen.out_dtype, device=device)
        lowered = not isinstance(screen, Float32Screen)
        self.block_buf = torch.empty(cols * dim, dtype=screen.dtype, device=device) if lowered else None
        self.scratch = torch.empty((LOWER_ROWS, dim), device=device) if isinstance(screen, Int8Screen) else None

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """The block `x` (at most `cols` rows) in the screen's low-precision form, in the reused block
        buffer (valid until the next call): the values `screen.prepare(x)` gives; float32 is `x` itself."""
        if self.block_buf is None:
            return x
        return self.screen.lower(x, self.block_buf[: x.numel()].view(x.shape), self.scratch)

    def gram(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = self.gram_buf[: a.shape[0] * b.shape[0]].view(a.shape[0], b.shape[0])
        return self.screen.gram(a, b, out=out)

    def tile_max(self, g: torch.Tensor) -> torch.Tensor:
        """Screened cosine maxima of `g` over tiles of `tile` columns (the last one possibly short)."""
        rows, cols = g.shape
        full, tiles = cols // self.tile, -(-cols // self.tile)
        out = self.tile_buf[: rows * tiles].view(rows, tiles)
        if full:
            torch.amax(g[:, : full * self.tile].unflatten(1, (full, self.tile)), dim=2, out=out[:, :full])
        if tiles > full:
            torch.amax(g[:, full * self.tile :], dim=1, keepdim=True, out=out[:, full:])
        return self.screen.cosines(out)


def bf16_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 when screening is on and bfloat16 GEMMs pay on this device, else None."""
    if SCREEN is False:
        return None
    if SCREEN is True:
        return torch.bfloat16
    if device.type not in _BF16_FAST:
        _BF16_FAST[device.type] = _cached_probe(device, "bfloat16", lambda: _probe_faster(device, torch.bfloat16))
    return torch.bfloat16 if _BF16_FAST[device.type] else None


def gemm_screen(device: torch.device, fit_on: torch.Tensor, *, allow_int8: bool = True) -> Screen | None:
    """The screen for the big all-pairs GEMMs on `device` (None: plain float32); an int8 scale is
    fitted to the coordinates of `fit_on`. Int8 pays only where its wider bound costs few
    rechecks (sampling far below the threshold), so callers choose whether to allow it."""
    if SCREEN is False:
        return None
    if allow_int8 and _int8_wanted(device):
        return Int8Screen.fitted(fit_on)
    return Bf16Screen(int(fit_on.shape[1])) if bf16_dtype(device) else None


def _int8_wanted(device: torch.device) -> bool:
    if INT8 is not None:
        return INT8 and hasattr(torch, "_int_mm")
    if device.type != "cpu" or not hasattr(torch, "_int_mm"):
        return False  # on CUDA, bfloat16 tensor cores are already fast and better tested
    if device.type not in _INT8_FAST:
        # At the sampler's block shape: int8 wins only on large GEMMs (~0.8x bfloat16 there).
        versus = bf16_dtype(device)
        _INT8_FAST[device.type] = _cached_probe(
            device, f"int8-vs-{versus}",
            lambda: _probe_faster(device, torch.int8, versus=versus, shape=(4096, 8192), margin=0.9),
        )
    return _INT8_FAST[device.type]


def cache_dir() -> Path:
    """Where synthface caches per-machine facts: `$XDG_CACHE_HOME/synthface`, else `~/.cache/synthface`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "synthface"


def _machine_key(device: torch.device, probe: str) -> str:
    """The probe's answer holds for this CPU model, torch build and thread count."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    return f"{device.type}|{model}|torch {torch.__version__}|{torch.get_num_threads()} threads|{probe}"


def _cached_probe(device: torch.device, probe: str, run) -> bool:
    """`run()`'s answer for this machine: read from the cache file when there, else probed and stored.
    CUDA answers come from the device's properties, so only CPU probes are cached. A cache that is
    missing, damaged, unreadable or unwritable is never an error: the probe simply runs."""
    if device.type != "cpu":
        return run()
    path = cache_dir() / "screening.json"
    key = _machine_key(device, probe)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), bool):
        return cached[key]
    answer = run()
    cached[key] = answer
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return answer


def _probe_faster(
    device: torch.device,
    dtype: torch.dtype,
    versus: torch.dtype | None = None,
    shape: tuple[int, int] = (2048, 4096),
    margin: float = 0.8,
) -> bool:
    """Whether a `dtype` GEMM takes under `margin` times the time of a `versus` one (default
    float32) on this device. CUDA: bf16 support. CPU: a one-off timed probe (0.2-0.6 s), since
    without avx512_bf16/AMX (bfloat16) or VNNI (int8) such GEMMs are emulated and no faster.
    Results never depend on the answer, only speed does."""
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(shape[0], 512, generator=gen) * 0.04
    b = torch.randn(shape[1], 512, generator=gen) * 0.04

    def best(kind: torch.dtype | None) -> float:
        if kind == torch.int8:
            x, y = (torch.round(t * 3000).clamp(-127, 127).to(torch.int8) for t in (a, b))
            run = lambda: torch._int_mm(x, y.T).amax(dim=1)  # noqa: E731
        else:
            x, y = (a, b) if kind is None else (a.to(kind), b.to(kind))
            run = lambda: (x @ y.T).amax(dim=1)  # noqa: E731
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        return best(dtype) < margin * best(versus)
    except RuntimeError:
        return False


@contextlib.contextmanager
def full_precision_accumulation(device: torch.device) -> Iterator[None]:
    """On CUDA, forbid cuBLAS's reduced-precision (bfloat16) split-K reductions, which
    `screen_delta` does not allow for; restore the user's setting afterwards."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = saved


def bf16_round(x: float, *, up: bool) -> float:
    """The nearest bfloat16 value at or above (`up`) or at or below `x`, as a Python float, so
    that comparing a bfloat16 tensor with it (done in bfloat16) is exact."""
    f = np.float32(x)
    if (f < x) if up else (f > x):
        f = np.nextafter(f, np.float32(np.inf if up else -np.inf))
    bits = np.array(f, dtype=np.float32).view(np.uint32)
    truncated = bits & np.uint32(0xFFFF0000)  # towards zero
    if truncated.view(np.float32) != f and up == (f > 0):
        truncated = truncated + np.uint32(0x10000)  # one bfloat16 step away from zero
    value = float(truncated.view(np.float32))
    assert float(torch.tensor(value).to(torch.bfloat16)) == value
    return value
