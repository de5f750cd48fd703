"""Identity banks: well-separated unit vectors in a face recogniser's embedding space.

`sample_identities` draws candidates from a prior and keeps one only if its cosine to every kept
vector (and to every excluded real person) is at most the threshold. Checks are blocked matrix
products on CPU or CUDA, so memory stays bounded (never an N x N matrix) and the total work is
about one all-pairs GEMM pass. An infeasible threshold ends in bounded time with an error that
says how far sampling got and which threshold would work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthface import __version__
from synthface.devices import available_memory, format_bytes, resolve_device
from synthface.errors import DeviceMemoryError, FileFormatError, InfeasibleThresholdError, InvalidInputError
from synthface.io import atomic_path, check_output_path
from synthface.screening import (
    Float32Screen,
    Int8Screen,
    Screen,
    bf16_dtype,
    bf16_round,
    full_precision_accumulation,
    gemm_screen,
    screen_delta,
)

PRIORS = ("isotropic", "gaussian")
# Sampling accepts only cosines this far below the threshold, so that recomputing them on another
# device or with another GEMM kernel (float32 rounding is ~1e-7) never exceeds the threshold.
GUARANTEE_MARGIN = 1e-5
# Within-batch greedy costs N x batch x D in all, against N^2 D / 2 for the bank checks: 4096
# keeps it under a tenth at 100K while the GEMMs stay large enough to run at full speed.
CANDIDATE_BATCH = 4096
# Below this many identities int8's wider bound (more float32 rechecks) and its small GEMMs cost
# more than int8 screening saves.
INT8_MIN_COUNT = 20_000
CHECKPOINT_EVERY = 300.0  # seconds between checkpoints of a sampling given a checkpoint file
CHECKPOINT_FORMAT = "synthface.identity_checkpoint/1"
BLOCK = 8192
WITHIN_ROWS = 1024  # candidate rows per gram of the within-batch check (16 MiB in float32)
_LOWER_ROWS = 1024  # rows rounded to int8 at a time through the float32 scratch buffer
TILE = 64  # columns per tile whose screened maximum verification keeps for its exact recheck
MAX_BINS = 10_000  # histogram bins of nearest-neighbour cosines (float32 cosines resolve ~1e-4 anyway)

ProgressCallback = Callable[["SamplingProgress"], None]
# Independent random streams per purpose, so that e.g. perturbation noise for seed s is never the
# very draw that produced identity vectors for seed s.
_STREAM_SAMPLE, _STREAM_PERTURB, _STREAM_MIXTURE, _STREAM_PROBE = 0x5A, 0x9E, 0x3C, 0x71


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream])))


# --------------------------------------------------------------------------- priors


@dataclass(frozen=True)
class Prior:
    """A distribution on the unit sphere: normalised draws from N(mean, cov) or uniform (isotropic)."""

    name: str
    dim: int
    mean: np.ndarray | None = None  # (D,) float64, gaussian only
    cov_factor: np.ndarray | None = None  # (D, D) float64 lower Cholesky factor, gaussian only
    shrinkage: float | None = None

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Return `count` unit vectors (float32) from this prior."""
        z = rng.standard_normal((count, self.dim))
        if self.name == "gaussian":
            z = self.mean + z @ self.cov_factor.T
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        return z.astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        if self.name != "gaussian":
            return {}
        return {
            "prior_mean": self.mean.astype(np.float32),
            "prior_cov_factor": np.ascontiguousarray(self.cov_factor, dtype=np.float32),
        }


def isotropic_prior(dim: int = 512) -> Prior:
    """Uniform on the unit sphere."""
    _check_positive_int("dim", dim)
    return Prior("isotropic", dim)


def gaussian_prior(reference: np.ndarray, shrinkage: float | None = None) -> Prior:
    """Gaussian fitted to reference embeddings (normalised first), with Ledoit-Wolf shrinkage.

    Shrinking the sample covariance towards a scaled identity keeps it well conditioned when there
    are fewer references than dimensions (a few hundred references for 512-d work). `shrinkage`
    None picks the Ledoit-Wolf optimum; a value in [0, 1] forces it.
    """
    ref = _check_vectors("reference", reference)
    if ref.shape[0] < 2:
        raise InvalidInputError(
            f"A gaussian prior needs at least 2 reference embeddings, got {ref.shape[0]}. Pass an "
            "(N, D) array of real embeddings with N >= 2 (a few hundred is better), or use the "
            "isotropic prior."
        )
    x = ref.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean = x.mean(axis=0)
    centred = x - mean
    n, d = centred.shape
    sample_cov = centred.T @ centred / n
    mu = np.trace(sample_cov) / d
    if shrinkage is None:
        # Ledoit & Wolf (2004): optimal convex weight between the sample covariance and mu * I.
        # Written out because scikit-learn is not a dependency; it is a dozen lines.
        delta = np.sum((sample_cov - mu * np.eye(d)) ** 2) / d
        sq = centred**2
        beta_bar = (np.sum(sq.T @ sq) / n - np.sum(sample_cov**2)) / (d * n)
        beta = min(beta_bar, delta)
        shrinkage = 0.0 if delta == 0 else beta / delta
    if not 0.0 <= shrinkage <= 1.0:
        raise InvalidInputError(f"shrinkage must lie in [0, 1], got {shrinkage}.")
    cov = (1.0 - shrinkage) * sample_cov + shrinkage * mu * np.eye(d)
    factor = np.linalg.cholesky(cov + 1e-12 * mu * np.eye(d))
    return Prior("gaussian", d, mean=mean, cov_factor=factor, shrinkage=float(shrinkage))


# --------------------------------------------------------------------------- bank


@dataclass
class IdentityBank:
    """N unit-norm float32 identity vectors plus how they were made.

    `nearest_cos`, when known (banks from `sample_identities`, and files they were saved to), is
    each vector's exact float32 cosine to its nearest neighbour in the bank (NaN for a bank of one).
    """

    vectors: np.ndarray  # (N, D) float32, unit norm
    prior: Prior
    max_cos: float | None = None
    seed: int | None = None
    exclude_max_cos: float | None = None
    num_excluded: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    nearest_cos: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def separation(self, bins: int = 40) -> Verification | None:
        """The recorded nearest-neighbour cosines as a `Verification` (exact max pairwise cosine and
        histogram, no products computed), or None for a bank without them (e.g. imported vectors)."""
        if self.nearest_cos is None:
            return None
        _check_bins(bins)
        return _summary(self.nearest_cos, bins, 0.0)

    def save(self, path: str | Path) -> Path:
        """Write `ids` (N, D) float32, the recorded `nearest_cos` and the prior as safetensors,
        atomically, straight from the arrays (no serialised copy of the bank in memory). Vectors that
        are not finite unit rows (norm within UNIT_ATOL of 1) are an InvalidInputError; nothing is written."""
        problem = _bank_problem(np.asarray(self.vectors))
        if problem:
            raise InvalidInputError(
                f"Cannot save the identity bank: its vectors (tensor 'ids') {problem}, and a bank holds finite unit "
                "vectors. " + ("Remove or replace those rows" if "NaN" in problem else "Normalise them first (vectors"
                " / numpy.linalg.norm(vectors, axis=1, keepdims=True))") + "; nothing was written."
            )
        path = check_output_path(path)
        meta = {
            "format": "synthface.identity_bank",
            "version": __version__,
            "prior": self.prior.name,
            "dim": str(self.dim),
            "count": str(len(self)),
            "max_cos": "" if self.max_cos is None else repr(float(self.max_cos)),
            "seed": "" if self.seed is None else str(self.seed),
            "exclude_max_cos": "" if self.exclude_max_cos is None else repr(self.exclude_max_cos),
            "num_excluded": str(self.num_excluded),
        }
        if self.prior.shrinkage is not None:
            meta["prior_shrinkage"] = repr(self.prior.shrinkage)
        meta.update(self.metadata)
        tensors = {"ids": self.vectors, **self.prior.tensors()}
        if self.nearest_cos is not None:
            tensors["nearest_cos"] = self.nearest_cos
        return _write_safetensors(path, tensors, meta)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> Path:
    """Float32 `tensors` as safetensors, written from the arrays themselves in the canonical layout of
    `synthface.io.safetensors_bytes` (tensors in name order, header keys sorted), atomically."""
    arrays = {name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in sorted(tensors)}
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            for array in arrays.values():
                data = memoryview(array.reshape(-1)).cast("B")
                for start in range(0, len(data), 1 << 28):  # a single write() moves at most ~2 GB
                    handle.write(data[start : start + (1 << 28)])
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def load_bank(path: str | Path) -> IdentityBank:
    """Load a bank saved by `IdentityBank.save`, or import an (N, D) `.npy` array of vectors."""
    path = Path(path)
    if path.suffix == ".npy":
        vectors = _normalise_rows(load_vectors(path))
        return IdentityBank(vectors, isotropic_prior(vectors.shape[1]), metadata={"imported_from": path.name})
    tensors, meta = _read_safetensors(path)
    if "ids" not in tensors:
        raise FileFormatError(
            f"{path} holds no tensor named 'ids' (found: {', '.join(sorted(tensors)) or 'none'}). "
            "An identity bank is written by `synthface ids sample`; to import raw vectors, save "
            "them as an (N, D) .npy file."
        )
    raw = _tensor_array(tensors["ids"])
    vectors = raw if raw.dtype.kind == "f" else _check_vectors(f"{path}: ids", raw)  # names complex, bool, ...
    problem = _bank_problem(vectors)
    if problem:
        raise FileFormatError(
            f"{path}: the identity vectors (tensor 'ids') {problem}, and a saved bank holds unit vectors, so the "
            "file is damaged or was edited. Sample the bank again with `synthface ids sample`, or import raw "
            "vectors as an (N, D) .npy array (normalised on import)."
        )
    vectors = vectors.astype(np.float32, copy=False)
    dim = vectors.shape[1]
    prior_name = meta.get("prior") or "isotropic"
    if prior_name not in PRIORS:
        raise _bad_metadata(path, "prior", prior_name, f"one of {', '.join(PRIORS)}")
    if prior_name == "gaussian" and "prior_mean" in tensors:
        mean = _tensor_array(tensors["prior_mean"]).astype(np.float64)
        factor = _tensor_array(tensors.get("prior_cov_factor", torch.zeros(0))).astype(np.float64)
        if mean.shape != (dim,) or factor.shape != (dim, dim) or not (np.isfinite(mean).all() and np.isfinite(factor).all()):
            raise FileFormatError(
                f"{path}: the gaussian prior's tensors prior_mean {mean.shape} and prior_cov_factor "
                f"{factor.shape} must be finite, of shapes ({dim},) and ({dim}, {dim}) for its {dim}-d ids. "
                "The file is damaged or was edited; sample the bank again with `synthface ids sample`."
            )
        shrinkage = _meta_number(path, meta, "prior_shrinkage", float)
        prior = Prior("gaussian", dim, mean=mean, cov_factor=factor, shrinkage=shrinkage)
    else:
        prior = isotropic_prior(dim)
    known = {"format", "version", "prior", "dim", "count", "max_cos", "seed", "exclude_max_cos",
             "num_excluded", "prior_shrinkage"}
    nearest = None
    if "nearest_cos" in tensors:
        nearest = _tensor_array(tensors["nearest_cos"])
        valid = nearest.shape == (vectors.shape[0],) and np.issubdtype(nearest.dtype, np.floating)
        if not valid or not (np.isfinite(nearest).all() or vectors.shape[0] == 1):
            raise FileFormatError(
                f"{path}: the tensor nearest_cos has shape {nearest.shape} and dtype {nearest.dtype}; it must be "
                f"{vectors.shape[0]} finite cosines, one per identity. The file is damaged or was edited; sample "
                "the bank again with `synthface ids sample`, or check it with `synthface ids verify`."
            )
        nearest = nearest.astype(np.float32)
    return IdentityBank(
        vectors=vectors,
        prior=prior,
        max_cos=_meta_number(path, meta, "max_cos", float),
        seed=_meta_number(path, meta, "seed", int),
        exclude_max_cos=_meta_number(path, meta, "exclude_max_cos", float),
        num_excluded=_meta_number(path, meta, "num_excluded", int) or 0,
        metadata={k: v for k, v in meta.items() if k not in known},
        nearest_cos=nearest,
    )


def _meta_number(path: Path, meta: dict[str, str], key: str, kind: type) -> float | int | None:
    """The number stored under `key` in a bank's metadata (None when absent or empty); a value that
    is not a finite number of that kind (or a negative count) is a FileFormatError naming file and key."""
    text = meta.get(key)
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or (kind is int and value < 0):
        raise _bad_metadata(path, key, text, "a finite number" if kind is float else "a non-negative integer")
    return value


def _bad_metadata(path: Path, key: str, text: str, expected: str) -> FileFormatError:
    return FileFormatError(
        f"{path}: metadata {key!r} is {text!r}, expected {expected}. The file is damaged or was edited by "
        "hand; sample the bank again with `synthface ids sample`, or save the vectors as an (N, D) .npy "
        "file to import them without metadata."
    )


def _tensor_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array of the same kind of numbers (bfloat16, which numpy lacks, as float32);
    complex or boolean tensors stay so, for `_check_vectors` to refuse."""
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def load_vectors(path: str | Path, dim: int | None = None) -> np.ndarray:
    """Read an (N, D) float array from `.npy` or `.safetensors` (tensor `ids`, `embeddings`, or the only one)."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise FileFormatError(f"{path} {_not_a_file(path)}. Pass the path of an (N, D) .npy array.")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FileFormatError(
                f"{path} is not a readable .npy array ({exc}). It may be empty, truncated or "
                "pickled; save vectors with numpy.save(path, array) as a plain float array."
            ) from None
    else:
        tensors, _ = _read_safetensors(path)
        for name in ("ids", "embeddings"):
            if name in tensors:
                array = _tensor_array(tensors[name])
                break
        else:
            if len(tensors) != 1:
                raise FileFormatError(
                    f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}) and none "
                    "is named 'ids' or 'embeddings'; name the (N, D) vectors tensor 'embeddings'."
                )
            array = _tensor_array(next(iter(tensors.values())))
    return _check_vectors(str(path), array, dim=dim)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileFormatError(f"{path} {_not_a_file(path)}. Check the path, or create the file with `synthface ids sample`.")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{path} is empty (0 bytes), probably left by an interrupted write; create it again.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise FileFormatError(
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or in another "
            "format; recreate it, or pass an (N, D) .npy array instead."
        ) from None
    return tensors, meta


def _not_a_file(path: Path) -> str:
    """Why an input `path` that is not a regular file cannot be read, as a predicate."""
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file" if path.exists() else "does not exist"


# --------------------------------------------------------------------------- sampling


def sample_identities(
    n: int,
    *,
    max_cos: float,
    prior: str | Prior = "isotropic",
    dim: int = 512,
    seed: int = 0,
    reference: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    exclude_max_cos: float | None = None,
    device: str | torch.device | None = None,
    max_draws: int | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = CHECKPOINT_EVERY,
) -> IdentityBank:
    """Sample `n` unit vectors whose pairwise cosines are all <= `max_cos`.

    Candidates come from `prior` ("isotropic", or "gaussian" fitted to `reference`), in seeded
    batches that are the same on every device, and are accepted greedily in draw order. Every
    cosine to a row of `exclude` is also kept <= `exclude_max_cos` (default: `max_cos`).
    Sampling stops after `max_draws` candidates (default 20 n + 100 000), or earlier once the
    acceptance rate shows `n` cannot be reached; it then raises `InfeasibleThresholdError`.

    The bank comes with each vector's exact float32 cosine to its nearest neighbour
    (`IdentityBank.nearest_cos`), recorded from the same screened products that decide acceptance
    (only cosines the screen's bound cannot settle are recomputed), so its maximum is the bank's
    exact max pairwise cosine without a second all-pairs pass; `verify` remains the independent check.

    `progress(SamplingProgress)` is called after each batch, with an ETA. With `checkpoint`, the
    state is written atomically to that file every `checkpoint_every` seconds, and an existing
    checkpoint of the same arguments is resumed: the result is identical to an uninterrupted run
    (a checkpoint of other arguments is refused). The file is left in place; delete it once the
    bank is saved. `device` goes through `synthface.devices.resolve_device`; a request whose bank
    cannot fit in the device's free memory raises DeviceMemoryError before anything is allocated.
    """
    _check_positive_int("n", n)
    _check_cosine("max_cos", max_cos)
    _check_seed(seed)
    device = resolve_device(device)
    prior_obj = _resolve_prior(prior, dim, reference)
    dim = prior_obj.dim
    if exclude is not None:
        exclude = _normalise_rows(_check_vectors("exclude", exclude, dim=dim))
        exclude_max_cos = max_cos if exclude_max_cos is None else exclude_max_cos
        _check_cosine("exclude_max_cos", exclude_max_cos)
    elif exclude_max_cos is not None:
        raise InvalidInputError("exclude_max_cos was given without exclude vectors; pass both or neither.")
    _check_geometric_feasibility(n, max_cos, dim)
    _check_memory(n, dim, device)
    max_draws = max_draws if max_draws is not None else 20 * n + 100_000
    args = {
        "n": n, "max_cos": repr(float(max_cos)), "dim": dim, "seed": int(seed), "max_draws": max_draws,
        "candidate_batch": CANDIDATE_BATCH, "prior": prior_obj.name,
        "prior_sha256": _digest(np.concatenate([t.ravel() for t in prior_obj.tensors().values()] or [np.zeros(0)])),
        "exclude_sha256": None if exclude is None else _digest(exclude),
        "exclude_max_cos": None if exclude_max_cos is None else repr(float(exclude_max_cos)),
    }

    rng = _rng(seed, _STREAM_SAMPLE)
    state = _Bank.allocate(n, dim, device)
    saved = _load_checkpoint(Path(checkpoint), args) if checkpoint is not None and Path(checkpoint).exists() else None
    draws = 0
    if saved is not None:
        draws = saved["draws"]
        rng.bit_generator.state = saved["rng"]
        state.restore(saved["ids"], saved["nearest_cos"])
    excluded = torch.from_numpy(exclude).to(device) if exclude is not None else None
    lp = bf16_dtype(device)  # the within-batch gram (small); the bank checks use `screen`
    delta = screen_delta(dim)
    excluded_err: torch.Tensor | None = None
    limit = max_cos - GUARANTEE_MARGIN
    ex_limit = None if exclude_max_cos is None else exclude_max_cos - GUARANTEE_MARGIN
    eta = _Eta(n)
    last_checkpoint = time.monotonic()
    with full_precision_accumulation(device):
        while state.count < n:
            batch = min(CANDIDATE_BATCH, max_draws - draws)
            if batch <= 0:
                break
            started = time.perf_counter()
            cand = torch.from_numpy(prior_obj.draw(rng, batch)).to(device)
            draws += batch
            if state.screen is None:  # the first batch picks the screen (an int8 scale fits these draws)
                state.use_screen(gemm_screen(device, cand if state.count == 0 else state.vectors[: state.count],
                                             allow_int8=n >= INT8_MIN_COUNT) or Float32Screen(dim),
                                 0 if excluded is None else excluded.shape[0])
                if excluded is not None and isinstance(state.screen, Int8Screen):
                    excluded_err = state.screen.prepare(excluded)[1]
            ok = torch.ones(batch, dtype=torch.bool, device=device)
            cand_s = _Screened.of(state.screen, cand)
            if excluded is not None:
                _reject_clashes(cand, cand_s, excluded, excluded_err, excluded.shape[0], ex_limit, ok, state.work)
            before = state.count
            log = state.near_log(batch, cand_s) if before else None
            if before:
                _reject_clashes(cand, cand_s, state.vectors, state.err, before, limit, ok, state.work, log)
            survivors = ok.nonzero().squeeze(1)
            keep = _greedy_keep_in_batch(cand[survivors], limit, cand[survivors].to(lp) if lp else None, delta)
            chosen = survivors[keep][: n - before]
            accepted = cand_s.take(chosen)
            state.append(cand[chosen], accepted.err)
            if log is not None:
                log.settle(chosen, before)
            state.record_within(before, accepted.low)
            eta.add(batch, before, state.count - before, time.perf_counter() - started)
            if progress:
                progress(SamplingProgress(state.count, n, draws, eta.elapsed,
                                            eta.remaining(state.count, CANDIDATE_BATCH, max_draws - draws)))
            rate = (state.count - before) / batch
            if state.count < n and state.count + rate * (max_draws - draws) < n:
                break  # acceptance only falls as the bank grows: the rest of the budget cannot suffice
            if checkpoint is not None and state.count < n and time.monotonic() - last_checkpoint >= checkpoint_every:
                _write_checkpoint(Path(checkpoint), args, state, draws, rng)
                last_checkpoint = time.monotonic()
    count = state.count
    if count < n:
        probe = _probe_draws(n, prior_obj, seed)
        feasible = _feasible_threshold(n, probe)
        raise InfeasibleThresholdError(
            _infeasible_message(n, count, draws, max_cos, prior_obj, feasible, exclude, exclude_max_cos, probe),
            reached=count,
            feasible_max_cos=feasible,
        )
    nearest = state.nearest.cpu().numpy()
    if n < 2:
        nearest = np.full(n, np.nan, dtype=np.float32)
    return IdentityBank(
        vectors=state.vectors.cpu().numpy(),
        prior=prior_obj,
        max_cos=float(max_cos),
        seed=seed,
        exclude_max_cos=exclude_max_cos,
        num_excluded=0 if exclude is None else int(exclude.shape[0]),
        metadata={"exclude_sha256": _digest(exclude)} if exclude is not None else {},
        nearest_cos=nearest,
    )


@dataclass(frozen=True)
class SamplingProgress:
    """Where `sample_identities` stands after a batch: identities accepted of `n`, candidates drawn,
    seconds so far in this process, and the estimated seconds left (None until a few batches are timed)."""

    accepted: int
    n: int
    draws: int
    elapsed_s: float
    eta_s: float | None


class _Eta:
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


class _Bank:
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
        self.work: _Work | None = None
        self.err_max = 0.0

    @classmethod
    def allocate(cls, n: int, dim: int, device: torch.device) -> _Bank:
        return cls(torch.empty((n, dim), dtype=torch.float32, device=device),
                   torch.full((n,), -2.0, dtype=torch.float32, device=device))

    def use_screen(self, screen: Screen, excluded: int) -> None:
        """Screen the bank with `screen` from now on; work space fits a candidate batch against a block of
        the bank or of the `excluded` vectors."""
        n, dim = self.vectors.shape
        self.screen = screen
        self.work = _Work(screen, CANDIDATE_BATCH, min(BLOCK, max(n, excluded)), dim, self.vectors.device)
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

    def slack(self, cand_s: _Screened | None = None) -> float:
        """One screen bound valid for every pair of bank vectors and candidates in `cand_s`."""
        worst = self.err_max if cand_s is None or cand_s.err is None else max(self.err_max, float(cand_s.err.max()))
        return float(self.screen.slack(worst, worst))

    def near_log(self, batch: int, cand_s: _Screened) -> _NearLog:
        return _NearLog(self, batch, self.slack(cand_s))

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


class _Work:
    """Work space reused by every block: a gram buffer for `rows` x `cols`, its per-tile maxima, and a
    buffer for one block of `cols` vectors in the screen's low-precision form."""

    def __init__(self, screen: Screen, rows: int, cols: int, dim: int, device: torch.device):
        self.screen = screen
        self.tile = math.gcd(TILE, BLOCK)
        self.gram_buf = torch.empty(rows * cols, dtype=screen.out_dtype, device=device)
        self.tile_buf = torch.empty(rows * -(-cols // self.tile), dtype=screen.out_dtype, device=device)
        lowered = not isinstance(screen, Float32Screen)
        self.block_buf = torch.empty(cols * dim, dtype=screen.dtype, device=device) if lowered else None
        self.scratch = torch.empty((_LOWER_ROWS, dim), device=device) if isinstance(screen, Int8Screen) else None

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


class _NearLog:
    """(candidate, bank tile) pairs of one batch whose exact cosines can matter for a nearest neighbour.

    A tile's exact maximum is within `slack` of its screened one, so a tile can hold a candidate's
    exact maximum only if its screened maximum is at least (candidate's screened maximum - 2 slack),
    and can hold a cosine above a bank vector's current nearest-neighbour cosine only if it is at
    least (the smallest such cosine in the tile - slack). Pairs meeting neither are dropped as the
    blocks go by; `settle` recomputes the rest of the accepted candidates' pairs in float32.
    """

    def __init__(self, bank: _Bank, batch: int, slack: float):
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


def _exact_tiles(bank: _Bank, rows: torch.Tensor, tiles: torch.Tensor, base: int, stop: int, *, columns: bool) -> None:
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


@dataclass
class _Screened:
    """Candidates in a screen's low-precision form, with each vector's rounding error (int8)."""

    screen: Screen
    low: torch.Tensor
    err: torch.Tensor | None

    @classmethod
    def of(cls, screen: Screen, x: torch.Tensor) -> _Screened:
        return cls(screen, *screen.prepare(x))

    def take(self, index: torch.Tensor) -> _Screened:
        return _Screened(self.screen, self.low[index], None if self.err is None else self.err[index])


def _max_cos_against(cand: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Row-wise max cosine of `cand` against `bank`, in blocks of the bank (float32)."""
    best = torch.full((cand.shape[0],), -2.0, device=cand.device)
    for start in range(0, bank.shape[0], BLOCK):
        best = torch.maximum(best, (cand @ bank[start : start + BLOCK].T).amax(dim=1))
    return best


def _reject_clashes(
    cand: torch.Tensor, cand_s: _Screened, bank: torch.Tensor, bank_err: torch.Tensor | None, count: int,
    limit: float, ok: torch.Tensor, work: _Work, log: _NearLog | None = None,
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


def _write_checkpoint(path: Path, args: dict, state: _Bank, draws: int, rng: np.random.Generator) -> None:
    """The sampling state after a whole batch (accepted vectors, their nearest-neighbour cosines, the
    draw count and the random generator's state) with the arguments it belongs to, atomically."""
    count = state.count
    meta = {
        "format": CHECKPOINT_FORMAT,
        "args": json.dumps(args, sort_keys=True),
        "draws": str(draws),
        "rng": json.dumps(rng.bit_generator.state, sort_keys=True),
    }
    _write_safetensors(path, {"ids": state.vectors[:count].cpu().numpy(),
                              "nearest_cos": state.nearest[:count].cpu().numpy()}, meta)


def _load_checkpoint(path: Path, args: dict) -> dict:
    """A checkpoint written by `_write_checkpoint` for these `args`: its arrays, draw count and
    generator state. A checkpoint of other arguments is an InvalidInputError naming the
    differences; an unreadable one a FileFormatError."""
    tensors, meta = _read_safetensors(path)
    try:
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        saved_args = json.loads(meta["args"])
        saved = {"draws": int(meta["draws"]), "rng": json.loads(meta["rng"]),
                 "ids": _tensor_array(tensors["ids"]), "nearest_cos": _tensor_array(tensors["nearest_cos"])}
        count = saved["ids"].shape[0]
        if saved["nearest_cos"].shape != (count,) or count > int(saved_args["n"]):
            raise ValueError("inconsistent tensor shapes")
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(
            f"{path} is not a usable identity-sampling checkpoint ({exc}). It is damaged or is another "
            "file; delete it (sampling then starts from the beginning) or pass another checkpoint path."
        ) from None
    differ = [f"{key} {saved_args.get(key)!r} (now {value!r})" for key, value in args.items() if saved_args.get(key) != value]
    if differ:
        raise InvalidInputError(
            f"The checkpoint {path} belongs to a sampling with other arguments: {'; '.join(differ)}. Resuming "
            "it would not give the bank these arguments ask for. Run the command with the checkpoint's "
            "arguments to resume it, or delete the checkpoint to start this sampling afresh."
        )
    return saved


def _greedy_keep_in_batch(
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


FEASIBLE_CAP = 0.999  # thresholds must stay below 1; advice never names 1.0


def _probe_draws(n: int, prior: Prior, seed: int) -> np.ndarray:
    """Plain draws from the prior (at most 50,000, from the seed's probe stream) that stand in for n:
    the infeasible path draws them once and judges every threshold on them."""
    return prior.draw(_rng(seed, _STREAM_PROBE), min(n, 50_000))


def _feasible_threshold(n: int, sample: np.ndarray, exclude: np.ndarray | None = None) -> float:
    """A threshold that n plain draws from the prior already satisfy, measured on `sample` (their
    `_probe_draws`): their exact max pairwise cosine, or with `exclude` their max cosine to its rows;
    rounded up to 0.001, at most FEASIBLE_CAP."""
    m = sample.shape[0]
    if exclude is None:
        observed = float(verify_vectors(sample, bins=0).max_cos)
        pairs, probed = n * (n - 1) / 2, m * (m - 1) / 2
    else:
        ex = torch.from_numpy(exclude)
        observed = max(
            float(_max_cos_against(torch.from_numpy(sample[i : i + CANDIDATE_BATCH]), ex).max())
            for i in range(0, m, CANDIDATE_BATCH)
        )
        pairs, probed = n * exclude.shape[0], m * exclude.shape[0]
    if n > m and probed > 1:
        # The maximum of m cosines grows like sqrt(log m); scale to n's pair count.
        observed *= math.sqrt(math.log(pairs) / math.log(probed))
    return min(FEASIBLE_CAP, math.ceil(min(observed, 1.0) * 1000) / 1000)


def _infeasible_message(
    n: int, count: int, draws: int, max_cos: float, prior: Prior, feasible: float,
    exclude: np.ndarray | None, exclude_max_cos: float | None, probe: np.ndarray,
) -> str:
    """What stopped sampling and the fix: the option at fault, with a valid value that works alone."""
    head = (
        f"Reached only {count} of {n} identities with every pairwise cosine <= {max_cos}"
        + ("" if exclude is None else f" and every cosine to the {exclude.shape[0]} excluded vectors <= {exclude_max_cos}")
        + f" after {draws} candidates from the {prior.name} prior (dim {prior.dim}); the acceptance rate "
        "shows the rest cannot be reached."
    )
    if feasible > max_cos:
        if feasible >= FEASIBLE_CAP:
            return f"{head} No --max-cos below 1 is met by {n} plain draws from this prior; ask for fewer identities."
        return f"{head} Ask for fewer identities, or raise --max-cos: about {feasible} is met by {n} plain draws from this prior."
    if exclude is not None:
        feasible_ex = _feasible_threshold(n, probe, exclude)
        if feasible_ex > exclude_max_cos:
            fix = (
                f"raise --exclude-max-cos: about {feasible_ex} is met by {n} plain draws from this prior"
                if feasible_ex < FEASIBLE_CAP else "exclude fewer vectors"
            )
            return (
                f"{head} The exclusion is what cannot be met (--max-cos {max_cos} alone is feasible). Ask for "
                f"fewer identities, or {fix}."
            )
    return (
        f"{head} Each threshold is feasible alone but not all together within the draw budget; ask for fewer "
        "identities, or raise both thresholds a little."
    )


def _check_geometric_feasibility(n: int, max_cos: float, dim: int) -> None:
    """Reject thresholds no set of n unit vectors can meet, before drawing anything."""
    if n > 1 and max_cos < -1.0 / (n - 1):
        bound = -1.0 / (n - 1)
        raise InfeasibleThresholdError(
            f"No {n} unit vectors can have every pairwise cosine <= {max_cos}: the mean pairwise "
            f"cosine of {n} unit vectors is at least {bound:.6f}. Raise --max-cos to at least that.",
            reached=0,
            feasible_max_cos=bound,
        )
    if max_cos < 0 and n > dim + 1:
        raise InfeasibleThresholdError(
            f"At most {dim + 1} vectors in {dim} dimensions can have all pairwise cosines below 0, "
            f"so {n} identities at max_cos {max_cos} are impossible. Use a threshold >= 0.",
            reached=0,
            feasible_max_cos=0.0,
        )


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    """Exact separation statistics of a bank."""

    count: int
    max_cos: float
    nearest_cos: np.ndarray  # (N,) each vector's cosine to its nearest neighbour
    histogram: np.ndarray  # counts of nearest_cos over `edges`
    edges: np.ndarray
    seconds: float


def verify(bank: IdentityBank | np.ndarray, *, bins: int = 40, device: str | torch.device | None = None) -> Verification:
    """Exact maximum pairwise cosine and nearest-neighbour cosine histogram, in bounded memory."""
    vectors = bank.vectors if isinstance(bank, IdentityBank) else bank
    return verify_vectors(vectors, bins=bins, device=device)


def verify_vectors(vectors: np.ndarray, *, bins: int = 40, device: str | torch.device | None = None) -> Verification:
    """`verify` of an (N, D) array; `bins` (0 to MAX_BINS, 0: no histogram) and `device` are checked first."""
    start = time.perf_counter()
    _check_bins(bins)
    device = resolve_device(device)
    t = _UnitRows(_check_vectors("vectors", vectors), device)
    n = t.shape[0]
    screen = gemm_screen(device, t[:1], allow_int8=False)  # bfloat16 or none: only the dimension is read
    with full_precision_accumulation(device):
        nearest = _nearest_fp32(t) if screen is None else _nearest_screened(t, screen)
    nearest_np = nearest.cpu().numpy() if n >= 2 else np.full(n, np.nan, dtype=np.float32)
    return _summary(nearest_np, bins, time.perf_counter() - start)


class _UnitRows:
    """The rows of a float32 (N, D) array as unit float32 vectors on `device`: the values
    `_normalise_rows` gives, bit for bit, with no normalised copy of the whole array (memory: the
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


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 0 <= bins <= MAX_BINS:
        raise InvalidInputError(
            f"bins (--bins) must be an integer from 0 (no histogram) to {MAX_BINS}, got {bins!r}."
        )


def _summary(nearest: np.ndarray, bins: int, seconds: float) -> Verification:
    """Max and histogram of nearest-neighbour cosines (NaN max for fewer than two vectors)."""
    n = nearest.shape[0]
    max_cos = float(np.max(nearest)) if n >= 2 else float("nan")
    if bins and n >= 2:
        hist, edges = np.histogram(nearest, bins=bins)
    else:
        hist, edges = np.zeros(0, dtype=np.int64), np.zeros(0)
    return Verification(n, max_cos, nearest, hist, edges, seconds)


def _nearest_fp32(t: _UnitRows) -> torch.Tensor:
    """Each row's maximum cosine to another row, in float32."""
    n = t.shape[0]
    nearest = torch.full((n,), -2.0, device=t.device)
    # Upper-triangular blocks only: each block updates the row maxima of both its sides.
    for i in range(0, n, BLOCK):
        a = t[i : i + BLOCK]
        for j in range(i, n, BLOCK):
            g = a @ t[j : j + BLOCK].T
            if i == j:
                g.fill_diagonal_(-2.0)
            nearest[i : i + BLOCK] = torch.maximum(nearest[i : i + BLOCK], g.amax(dim=1))
            if i != j:
                nearest[j : j + BLOCK] = torch.maximum(nearest[j : j + BLOCK], g.amax(dim=0))
    return nearest


def _nearest_screened(t: _UnitRows, screen: Screen) -> torch.Tensor:
    """The same float32 nearest-neighbour cosines as `_nearest_fp32`, from one screened pass.

    The pass keeps, per row, the screened maximum over each tile of TILE columns. A tile whose
    screened maximum is below (row's screened maximum - 2 delta) holds only float32 cosines below
    (row's float32 maximum) - as its own best tile is within delta of the screened maximum - so
    only the (row, tile) pairs at or above that line are recomputed in float32. Those are kept
    as a list filtered against the running row maxima (a superset of the final ones), so memory
    is O(N x tiles near the maximum), never N x N.
    """
    n, device = t.shape[0], t.device
    tile = math.gcd(TILE, BLOCK)
    worst = None  # int8: one bound from the worst vector's rounding error, both sides
    if isinstance(screen, Int8Screen):
        worst = max((float(screen.prepare(t[i : i + BLOCK])[1].max()) for i in range(0, n, BLOCK)), default=0.0)
    delta = float(screen.slack(worst, worst))
    # No screened copy of the bank: each block is rounded into one of two reused buffers (rows, columns)
    # just before its product, and every product lands in one reused gram buffer.
    work = _Work(screen, min(n, BLOCK), min(n, BLOCK), t.shape[1], device)
    rows_work = _Work(screen, 0, min(n, BLOCK), t.shape[1], device)
    # The normalised row block and column block (a float32 screen would use them as they are).
    unit_rows, unit_cols = (torch.empty((min(n, BLOCK), t.shape[1]), device=device) for _ in range(2))
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

    for i in range(0, n, BLOCK):
        a = rows_work.lower(t.block_into(i, unit_rows))
        for j in range(i, n, BLOCK):
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


# --------------------------------------------------------------------------- perturbation


def perturb(
    vectors: np.ndarray,
    cos: float | Sequence[float] | np.ndarray | Mapping[float, float],
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """Unit vectors at an exact target cosine to each row of `vectors` (angular perturbation).

    Each output is cos * v + sin * u with u a random unit direction orthogonal to v. `cos` is one
    value, one per row, or a mixture such as {0.96: 0.4, 0.90: 0.4, 0.82: 0.2} assigned to rows by
    `mixture_cosines`. `seed` is one seed, or one per row so that a row's result does not depend on
    its batch-mates (the engine derives one per image).
    """
    v = _normalise_rows(_check_vectors("vectors", vectors)).astype(np.float64)
    n, d = v.shape
    seeds = _perturb_seeds(seed, n)
    if isinstance(cos, Mapping):
        targets = mixture_cosines(cos, n, seed=seeds if isinstance(seeds, int) else seeds[0])
    else:
        given = np.asarray(cos)
        if given.dtype.kind not in "iuf" or given.ndim > 1 or (given.ndim == 1 and len(given) != n):
            what = (f"{len(given)} target cosine(s)" if given.ndim == 1 else
                    f"an array of shape {given.shape}" if given.ndim else f"{cos!r} ({type(cos).__name__})")
            raise InvalidInputError(
                f"perturb got {what} for {n} vectors; pass one number, one per vector (a 1-D sequence of {n}), "
                "or a {cosine: share} mixture."
            )
        targets = np.broadcast_to(given.astype(np.float64), (n,)).copy()
    if not np.all(np.isfinite(targets)) or np.any(targets < -1) or np.any(targets > 1):
        raise InvalidInputError(f"target cosines must lie in [-1, 1]; got values from {targets.min()} to {targets.max()}.")
    if isinstance(seeds, int):
        noise = _rng(seeds, _STREAM_PERTURB).standard_normal((n, d))
    else:
        noise = np.stack([_rng(s, _STREAM_PERTURB).standard_normal(d) for s in seeds]) if n else np.zeros((0, d))
    noise -= np.sum(noise * v, axis=1, keepdims=True) * v
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = targets[:, None] * v + np.sqrt(1.0 - targets[:, None] ** 2) * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def _perturb_seeds(seed, n: int) -> int | list[int]:
    """`perturb`'s seed: one non-negative integer, or a 1-D sequence of exactly `n` of them (one per
    vector); anything else (negative, fractional, boolean, text, another count) is an InvalidInputError."""
    def whole(s) -> bool:
        return isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 0

    if whole(seed):
        return int(seed)
    many = list(seed) if isinstance(seed, (list, tuple)) or (isinstance(seed, np.ndarray) and seed.ndim == 1) else [seed]
    bad = [s for s in many if not whole(s)]
    if bad:
        raise InvalidInputError(f"perturb's seeds must be non-negative integers (one, or one per vector), got {bad[0]!r}.")
    if len(many) != n:
        raise InvalidInputError(f"perturb got {len(many)} seeds for {n} vectors; pass one seed, or one per vector.")
    return [int(s) for s in many]


def mixture_cosines(mixture: Mapping[float, float], count: int, seed: int = 0) -> np.ndarray:
    """`count` target cosines in the mixture's proportions (largest remainder), in seeded order."""
    if not mixture:
        raise InvalidInputError("the perturbation mixture is empty; give at least one {cosine: share} pair.")
    cosines = np.array([float(c) for c in mixture], dtype=np.float64)
    shares = np.array([float(s) for s in mixture.values()], dtype=np.float64)
    if np.any(shares < 0) or not np.isfinite(shares).all() or shares.sum() <= 0:
        raise InvalidInputError(f"mixture shares must be non-negative and sum to more than 0; got {dict(mixture)}.")
    shares = shares / shares.sum()
    exact = shares * count
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: count - counts.sum()]:
        counts[i] += 1
    values = np.repeat(cosines, counts)
    _rng(seed, _STREAM_MIXTURE).shuffle(values)
    return values


# --------------------------------------------------------------------------- checks


def _resolve_prior(prior: str | Prior, dim: int, reference: np.ndarray | None) -> Prior:
    if isinstance(prior, Prior):
        return prior
    if prior == "isotropic":
        if reference is not None:
            raise InvalidInputError("reference embeddings were given with the isotropic prior; use prior='gaussian' to fit them.")
        return isotropic_prior(dim)
    if prior == "gaussian":
        if reference is None:
            raise InvalidInputError(
                "The gaussian prior is fitted to reference embeddings, and none were given. Pass "
                "reference=<(N, D) array> (CLI: --reference ref.npy), or use the isotropic prior."
            )
        return gaussian_prior(reference)
    raise InvalidInputError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIORS)}.")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed (--seed) must be a non-negative integer, got {seed!r}.")


def _check_memory(n: int, dim: int, device: torch.device) -> None:
    """Refuse a bank that cannot fit: the float32 bank (n x dim x 4 bytes; no screened copy), its
    nearest-neighbour cosines and int8 errors (n x 12 bytes), one candidate batch's draws and copies
    (x 32 bytes), its within-batch gram (WITHIN_ROWS rows, x 8 bytes), the reused block gram
    (batch x block x 4) and the block's screened form (block x dim x 2)."""
    batch, block = CANDIDATE_BATCH, min(n, BLOCK)
    needed = (n * dim * 4 + n * 12 + batch * dim * 32 + min(n, batch) * min(n, WITHIN_ROWS) * 8
              + batch * block * 4 + block * dim * 2)
    free = available_memory(device)
    if free is not None and needed > free:
        raise DeviceMemoryError(
            f"Sampling {n} identities of dimension {dim} needs about {format_bytes(needed)} of memory on "
            f"{device} (the bank and one batch of candidates), but only about "
            f"{format_bytes(free)} is free. Ask for fewer identities (--num) or a smaller dimension (--dim)."
        )


def _check_cosine(name: str, value: float) -> None:
    if not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) or not -1.0 < value < 1.0:
        raise InvalidInputError(
            f"{name} must be a cosine strictly between -1 and 1, got {value!r}. Typical identity "
            "separation thresholds are 0.3 to 0.4."
        )


def _check_vectors(name: str, array, dim: int | None = None) -> np.ndarray:
    """`array` as float32 (N, D) vectors with N, D > 0, every row finite and of non-zero norm in
    float32 (a direction), else InvalidInputError naming `name` and the first offending row.
    Complex, boolean and other non-real arrays are refused, never silently cast."""
    x = np.asarray(array)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidInputError(f"{name} must be a non-empty (N, D) array of vectors, got shape {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInputError(
            f"{name} has dimension {x.shape[1]} but {dim} is expected; its vectors must come from "
            "the same recogniser as the identities (ArcFace: 512)."
        )
    if np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidInputError(
            f"{name} holds complex numbers (dtype {x.dtype}); identity vectors are real. Pass the real "
            "vectors (for example array.real, if every imaginary part is zero) as a float array."
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidInputError(f"{name} must hold real numbers (a float or integer array), got dtype {x.dtype}.")
    _refuse_rows(name, ~_finite_rows(x), "with NaN or inf", "remove them before use")
    _refuse_rows(name, _row_norms(x) == 0, "that are all zero, which have no direction", "remove them")
    x32 = x.astype(np.float32, copy=False)
    if x32 is not x:
        _refuse_rows(name, ~_finite_rows(x32), "with values beyond float32's range (3.4e38)",
                     "scale the vectors down (for example to unit norm)")
        _refuse_rows(name, _row_norms(x32) == 0, "whose values all underflow to zero in float32",
                     "scale the vectors up (for example to unit norm)")
    return x32


UNIT_ATOL = 1e-4  # how far from 1 a saved bank's row norms may be (float32 rounding is ~1e-7)


def _bank_problem(x: np.ndarray) -> str | None:
    """None when `x` is a non-empty (N, D) float array of finite unit rows (norms within UNIT_ATOL of 1),
    else what is wrong, in words; one pass over the rows."""
    if x.ndim != 2 or 0 in x.shape or x.dtype.kind != "f":
        return f"is not a non-empty (N, D) float array (shape {x.shape}, dtype {x.dtype})"
    norms = _row_norms(x)
    for bad, what in ((~np.isfinite(norms), "with NaN or inf"), (np.abs(norms - 1.0) > UNIT_ATOL, "of norm other than 1")):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return f"has {int(bad.sum())} row(s) {what} (first: row {first}, norm {norms[first]:.6g})"
    return None


def _refuse_rows(name: str, bad: np.ndarray, what: str, fix: str) -> None:
    if bad.any():
        raise InvalidInputError(
            f"{name} has {int(bad.sum())} row(s) {what} (first: row {int(np.flatnonzero(bad)[0])}); {fix}."
        )


ROW_BLOCK = 1 << 16  # rows converted to float64 at a time, so norms cost bounded extra memory


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """Whether each row is all finite, ROW_BLOCK rows at a time (no N x D temporary)."""
    finite = np.empty(x.shape[0], dtype=bool)
    for i in range(0, x.shape[0], ROW_BLOCK):
        finite[i : i + ROW_BLOCK] = np.isfinite(x[i : i + ROW_BLOCK]).all(axis=1)
    return finite


def _row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, computed in float64: a float32 row of tiny (or huge) values whose
    float32 sum of squares underflows (overflows) still gets its true norm."""
    norms = np.empty(x.shape[0], dtype=np.float64)
    for i in range(0, x.shape[0], ROW_BLOCK):
        norms[i : i + ROW_BLOCK] = np.linalg.norm(x[i : i + ROW_BLOCK].astype(np.float64), axis=1)
    return norms


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm float32 rows, divided in float64 so that tiny or huge rows normalise correctly."""
    out = np.empty(x.shape, dtype=np.float32)
    for i in range(0, x.shape[0], ROW_BLOCK):
        block = x[i : i + ROW_BLOCK].astype(np.float64)
        out[i : i + ROW_BLOCK] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


_STREAM_REPLACE = 0xD7
REPLACEMENT_DRAWS = 100_000  # candidates tried per replaced row before giving up


def draw_replacements(
    vectors: np.ndarray,
    rows: np.ndarray,
    *,
    prior: Prior,
    max_cos: float,
    seed: int,
    round_: int,
    exclude: np.ndarray | None = None,
    exclude_max_cos: float | None = None,
    max_draws: int = REPLACEMENT_DRAWS,
) -> np.ndarray:
    """Fresh vectors for `rows` of a bank (e.g. identities that turned out to look alike), drawn from
    the bank's `prior`, each with cosine <= `max_cos` to every other vector of the bank (the kept ones
    and the replacements drawn before it, in the order of `rows`) and <= `exclude_max_cos` (default
    `max_cos`) to every row of `exclude`.

    Deterministic: row r's candidates come from a stream seeded by (seed, round_, r), and the checks
    are exact float32 products. Returns (len(rows), D) float32 unit vectors; raises
    InfeasibleThresholdError when a row finds no candidate within `max_draws`.
    """
    from synthface.errors import InfeasibleThresholdError

    bank = np.array(vectors, dtype=np.float32, copy=True)
    rows = np.asarray(rows, dtype=np.int64)
    ex = None if exclude is None else _normalise_rows(_check_vectors("exclude", exclude, dim=bank.shape[1]))
    ex_limit = max_cos if exclude_max_cos is None else exclude_max_cos
    others = np.ones(bank.shape[0], dtype=bool)
    others[rows] = False  # the vectors being replaced no longer count
    out = np.empty((rows.size, bank.shape[1]), dtype=np.float32)
    batch = 64
    for k, row in enumerate(rows.tolist()):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _STREAM_REPLACE, int(round_), row])))
        found = None
        for _ in range(0, max_draws, batch):
            cand = prior.draw(rng, batch)
            ok = np.ones(batch, dtype=bool)
            for i in range(0, bank.shape[0], ROW_BLOCK):
                live = others[i : i + ROW_BLOCK]
                if live.any():
                    ok &= (bank[i : i + ROW_BLOCK][live] @ cand.T).max(axis=0) <= max_cos
            if ex is not None:
                ok &= (ex @ cand.T).max(axis=0) <= ex_limit
            if ok.any():
                found = cand[int(np.argmax(ok))]
                break
        if found is None:
            raise InfeasibleThresholdError(
                f"No replacement for identity {row} was found in {max_draws} draws from the {prior.name} prior that "
                f"keeps cosine <= {max_cos} to the other {int(others.sum())} identities"
                f"{' and the excluded vectors' if ex is not None else ''}: the bank is nearly full at this "
                "threshold. Raise identities.max_cos, lower identities.count, or use filtering.collision_policy = "
                "\"drop\".",
                reached=k, feasible_max_cos=float("nan"),
            )
        out[k] = bank[row] = found
        others[row] = True
    return out
