"""Typed errors at the pipelines' own boundaries: `.to()`, `save_pretrained` and the loaders' dtype and
device arguments, shared by Arc2Face and Vec2Face.

diffusers answers a dtype given as a string, an unknown or missing device and a save folder that is a
file with a TypeError, RuntimeError, AssertionError or NotADirectoryError from deep inside torch or
the file system; these checks turn each into an InvalidInputError or OutputPathError paragraph before
any work is done.
"""

from __future__ import annotations

from pathlib import Path

import torch

from synthface.errors import InvalidInputError

#: torch's own spellings of the dtypes a user may mean, for the hint of a dtype given as a string.
_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "float": "float32", "fp16": "float16",
                "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def check_dtype(dtype, who: str = "dtype") -> torch.dtype:
    """`dtype` if it is a torch floating-point dtype, else an InvalidInputError naming `who` (the
    argument) and the torch dtype meant. The names "fp16" etc. are `synthface.render.build_renderer`'s."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    meant = _DTYPE_NAMES.get(dtype.strip().lower()) if isinstance(dtype, str) else None
    hint = (f"pass torch.{meant}" if meant else "pass torch.float32, torch.float16 or torch.bfloat16")
    raise InvalidInputError(
        f"{who} must be a torch floating-point dtype, got {dtype!r}; {hint}. (The names fp32, fp16 and bf16 "
        "are what synthface.render.build_renderer, recipes and the command line take.)"
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
