"""Typed errors at the pipelines' own boundaries: `.to()`, `save_pretrained` and the loaders' dtype and
device arguments, and the bounds of the numbers they take, shared by every family.

diffusers answers a dtype given as a string, an unknown or missing device and a save folder that is a
file with a TypeError, RuntimeError, AssertionError or NotADirectoryError from deep inside torch or
the file system; these checks turn each into an InvalidInputError or OutputPathError paragraph before
any work is done.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from synthface.errors import InvalidInputError

#: torch's own spellings of the dtypes a user may mean, for the hint of a dtype given as a string.
_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "float": "float32", "fp16": "float16",
                "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
# An ID vector whose norm differs from 1 by more than this is renormalised with a warning.
NORM_TOLERANCE = 1e-3


def check_dtype(dtype, who: str = "dtype") -> torch.dtype:
    """`dtype` if it is a torch floating-point dtype, else an InvalidInputError naming `who` (the
    argument) and the torch dtype meant. The names "fp16" etc. are `synthface.generators.build_renderer`'s."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    meant = _DTYPE_NAMES.get(dtype.strip().lower()) if isinstance(dtype, str) else None
    hint = (f"pass torch.{meant}" if meant else "pass torch.float32, torch.float16 or torch.bfloat16")
    raise InvalidInputError(
        f"{who} must be a torch floating-point dtype, got {dtype!r}; {hint}. (The names fp32, fp16 and bf16 "
        "are what synthface.generators.build_renderer, recipes and the command line take.)"
    )


def check_device(device, who: str = "device") -> torch.device | None:
    """`device` as a torch device this machine has (`synthface.devices.resolve_device`; "meta" is
    passed through), None as None; a dtype given where a device belongs is named as such."""
    from synthface.devices import resolve_device

    if device is None:
        return None
    if isinstance(device, str) and device.strip().lower() in _DTYPE_NAMES:
        raise InvalidInputError(
            f"{who} {device!r} is a dtype, not a device; pass dtype=torch.{_DTYPE_NAMES[device.strip().lower()]} "
            "(and a device such as 'cpu' or 'cuda' separately)."
        )
    if (isinstance(device, torch.device) and device.type == "meta") or device == "meta":
        return torch.device("meta")
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device) if device >= 0 else str(device)
    try:
        return resolve_device(device)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{who}: {exc}") from None


class CheckedPipelineMixin:
    """Put first among a pipeline's bases: `.to()` and `save_pretrained` check their arguments."""

    def to(self, *args, **kwargs):
        """diffusers' `to(device, dtype)` with the device checked against this machine and the dtype
        required to be a torch dtype (InvalidInputError otherwise, before anything moves)."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if len(args) > 2:
            raise InvalidInputError(f"{type(self).__name__}.to takes a device and a dtype, got {len(args)} arguments.")
        if len(args) == 2:
            device, dtype = args
        elif len(args) == 1 and isinstance(args[0], torch.dtype):
            dtype = args[0]
        elif len(args) == 1:
            device = args[0]
        name = type(self).__name__
        return super().to(device=check_device(device, f"{name}.to device"),
                          dtype=None if dtype is None else check_dtype(dtype, f"{name}.to dtype"), **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' `save_pretrained`, with a folder path that is a file, lies under a file, is too
        long or read-only refused first (OutputPathError), and a full disk met while writing reported
        as one OutputPathError paragraph."""
        from synthface.io import check_output_folder, output_errors

        folder = check_output_folder(Path(save_directory), what="pipeline folder", option="save_directory")
        with output_errors(folder, action="save the pipeline into"):
            return super().save_pretrained(save_directory, *args, **kwargs)


def check_id_embeds(id_embeds, dim: int) -> torch.Tensor:
    """Validate ID vectors and return them as (N, dim) float32 unit rows on the CPU.

    A 1-D vector is one identity. Wrong shape, an empty batch, NaN/inf and zero vectors raise
    `InvalidInputError`; any other vector is normalised (with a warning when it was not unit-norm),
    exactly even when its norm would overflow or underflow float32, so every row returned has norm 1.
    """
    if isinstance(id_embeds, np.ndarray):
        x = torch.from_numpy(np.asarray(id_embeds))
    elif isinstance(id_embeds, torch.Tensor):
        x = id_embeds.detach()
    else:
        raise InvalidInputError(
            f"id_embeds must be a torch.Tensor or numpy array of shape (N, {dim}), got {type(id_embeds).__name__}."
        )
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise InvalidInputError(f"id_embeds must hold real numbers, got dtype {x.dtype}.")
    x = x.to("cpu", torch.float64)  # float64 until normalised: float32 overflows from norms of ~1.8e19
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise InvalidInputError(
            f"id_embeds has shape {tuple(x.shape)}; expected (N, {dim}): one {dim}-d ArcFace vector per "
            "identity (from the generator's own recogniser, for a published model)."
        )
    if x.shape[0] == 0:
        raise InvalidInputError("id_embeds is empty (0 identities); pass at least one ID vector.")
    bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise InvalidInputError(f"id_embeds rows {bad[:10]} contain NaN or inf; every value must be finite.")
    # Scale each row by its largest magnitude first, so the norm neither overflows nor underflows.
    peak = x.abs().amax(dim=1)
    zero = (peak == 0).nonzero().flatten().tolist()
    if zero:
        raise InvalidInputError(
            f"id_embeds rows {zero[:10]} are zero vectors, which name no identity; pass unit-norm ID vectors."
        )
    scaled = x / peak[:, None]
    unit = scaled / scaled.norm(dim=1, keepdim=True)
    norms = peak * scaled.norm(dim=1)  # may be inf for a finite float64 row: only reported, never divided by
    off = ((norms - 1).abs() > NORM_TOLERANCE).nonzero().flatten().tolist()
    if off:
        warnings.warn(
            f"{len(off)} of {x.shape[0]} ID vectors are not unit-norm (first: row {off[0]}, norm "
            f"{float(norms[off[0]]):.4g}); normalising them, as the generators expect.",
            UserWarning,
            stacklevel=3,
        )
    return unit.to(torch.float32)