"""Sampling: `sample_identities` draws candidates from a prior and keeps one only if its cosine to
every kept vector (and to every excluded real person) is at most the threshold, with progress,
an ETA and resumable checkpoints.

Checks are blocked matrix products on CPU or CUDA (`synthface.identity.separation`), so memory stays
bounded (never an N x N matrix) and the total work is about one all-pairs GEMM pass. An infeasible
threshold ends in bounded time with an error that says how far sampling got and which threshold
would work (`synthface.identity.feasibility`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthface.checks import check_positive_int, check_seed
from synthface.devices import available_memory, format_bytes, resolve_device
from synthface.errors import DeviceMemoryError, FileFormatError, InfeasibleThresholdError, InvalidInputError
from synthface.identity import separation
from synthface.identity._vectors import check_vectors, digest, normalise_rows
from synthface.identity.bank import IdentityBank, read_safetensors, tensor_array, write_safetensors
from synthface.identity.eta import Eta
from synthface.identity.feasibility import (
    check_geometric_feasibility,
    feasible_threshold,
    infeasible_message,
    probe_draws,
)
from synthface.identity.prior import Prior, resolve_prior
from synthface.identity.separation import BankState, greedy_keep_in_batch, reject_clashes
from synthface.screening import (
    Float32Screen,
    Int8Screen,
    Screened,
    bf16_dtype,
    full_precision_accumulation,
    gemm_screen,
    screen_delta,
)
from synthface.seeds import SAMPLE_STREAM, stream_rng

# Sampling accepts only cosines this far below the threshold, so that recomputing them on another
# device or with another GEMM kernel (float32 rounding is ~1e-7) never exceeds the threshold.
GUARANTEE_MARGIN = 1e-5
# Below this many identities int8's wider bound (more float32 rechecks) and its small GEMMs cost
# more than int8 screening saves.
INT8_MIN_COUNT = 20_000
CHECKPOINT_EVERY = 300.0  # seconds between checkpoints of a sampling given a checkpoint file
CHECKPOINT_FORMAT = "synthface.identity_checkpoint/1"

ProgressCallback = Callable[["SamplingProgress"], None]


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
    check_positive_int("n", n)
    _check_cosine("max_cos", max_cos)
    check_seed(seed)
    device = resolve_device(device)
    prior_obj = resolve_prior(prior, dim, reference)
    dim = prior_obj.dim
    if exclude is not None:
        exclude = normalise_rows(check_vectors("exclude", exclude, dim=dim))
        exclude_max_cos = max_cos if exclude_max_cos is None else exclude_max_cos
        _check_cosine("exclude_max_cos", exclude_max_cos)
    elif exclude_max_cos is not None:
        raise InvalidInputError("exclude_max_cos was given without exclude vectors; pass both or neither.")
    check_geometric_feasibility(n, max_cos, dim)
    _check_memory(n, dim, device)
    max_draws = max_draws if max_draws is not None else 20 * n + 100_000
    args = {
        "n": n, "max_cos": repr(float(max_cos)), "dim": dim, "seed": int(seed), "max_draws": max_draws,
        "candidate_batch": separation.CANDIDATE_BATCH, "prior": prior_obj.name,
        "prior_sha256": digest(np.concatenate([t.ravel() for t in prior_obj.tensors().values()] or [np.zeros(0)])),
        "exclude_sha256": None if exclude is None else digest(exclude),
        "exclude_max_cos": None if exclude_max_cos is None else repr(float(exclude_max_cos)),
    }

    rng = stream_rng(seed, SAMPLE_STREAM)
    state = BankState.allocate(n, dim, device)
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
    eta = Eta(n)
    last_checkpoint = time.monotonic()
    with full_precision_accumulation(device):
        while state.count < n:
            batch = min(separation.CANDIDATE_BATCH, max_draws - draws)
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
            cand_s = Screened.of(state.screen, cand)
            if excluded is not None:
                reject_clashes(cand, cand_s, excluded, excluded_err, excluded.shape[0], ex_limit, ok, state.work)
            before = state.count
            log = state.near_log(batch, cand_s) if before else None
            if before:
                reject_clashes(cand, cand_s, state.vectors, state.err, before, limit, ok, state.work, log)
            survivors = ok.nonzero().squeeze(1)
            keep = greedy_keep_in_batch(cand[survivors], limit, cand[survivors].to(lp) if lp else None, delta)
            chosen = survivors[keep][: n - before]
            accepted = cand_s.take(chosen)
            state.append(cand[chosen], accepted.err)
            if log is not None:
                log.settle(chosen, before)
            state.record_within(before, accepted.low)
            eta.add(batch, before, state.count - before, time.perf_counter() - started)
            if progress:
                progress(SamplingProgress(state.count, n, draws, eta.elapsed,
                                            eta.remaining(state.count, separation.CANDIDATE_BATCH, max_draws - draws)))
            rate = (state.count - before) / batch
            if state.count < n and state.count + rate * (max_draws - draws) < n:
                break  # acceptance only falls as the bank grows: the rest of the budget cannot suffice
            if checkpoint is not None and state.count < n and time.monotonic() - last_checkpoint >= checkpoint_every:
                _write_checkpoint(Path(checkpoint), args, state, draws, rng)
                last_checkpoint = time.monotonic()
    count = state.count
    if count < n:
        probe = probe_draws(n, prior_obj, seed)
        feasible = feasible_threshold(n, probe)
        raise InfeasibleThresholdError(
            infeasible_message(n, count, draws, max_cos, prior_obj, feasible, exclude, exclude_max_cos, probe),
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
        metadata={"exclude_sha256": digest(exclude)} if exclude is not None else {},
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


def _write_checkpoint(path: Path, args: dict, state: BankState, draws: int, rng: np.random.Generator) -> None:
    """The sampling state after a whole batch (accepted vectors, their nearest-neighbour cosines, the
    draw count and the random generator's state) with the arguments it belongs to, atomically."""
    count = state.count
    meta = {
        "format": CHECKPOINT_FORMAT,
        "args": json.dumps(args, sort_keys=True),
        "draws": str(draws),
        "rng": json.dumps(rng.bit_generator.state, sort_keys=True),
    }
    write_safetensors(path, {"ids": state.vectors[:count].cpu().numpy(),
                              "nearest_cos": state.nearest[:count].cpu().numpy()}, meta)


def _load_checkpoint(path: Path, args: dict) -> dict:
    """A checkpoint written by `_write_checkpoint` for these `args`: its arrays, draw count and
    generator state. A checkpoint of other arguments is an InvalidInputError naming the
    differences; an unreadable one a FileFormatError."""
    tensors, meta = read_safetensors(path)
    try:
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        saved_args = json.loads(meta["args"])
        saved = {"draws": int(meta["draws"]), "rng": json.loads(meta["rng"]),
                 "ids": tensor_array(tensors["ids"]), "nearest_cos": tensor_array(tensors["nearest_cos"])}
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


def _check_memory(n: int, dim: int, device: torch.device) -> None:
    """Refuse a bank that cannot fit: the float32 bank (n x dim x 4 bytes; no screened copy), its
    nearest-neighbour cosines and int8 errors (n x 12 bytes), one candidate batch's draws and copies
    (x 32 bytes), its within-batch gram (WITHIN_ROWS rows, x 8 bytes), the reused block gram
    (batch x block x 4) and the block's screened form (block x dim x 2)."""
    batch, block = separation.CANDIDATE_BATCH, min(n, separation.BLOCK)
    needed = (n * dim * 4 + n * 12 + batch * dim * 32 + min(n, batch) * min(n, separation.WITHIN_ROWS) * 8
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
