"""The one place a device name from a user (CLI option, recipe field, API argument) becomes a torch device.

`resolve_device` accepts only devices this machine can run on and refuses anything else with an
`InvalidInputError` that names the device and the choices here, before any work starts.
"""

from __future__ import annotations

import torch

from synthface.errors import InvalidInputError

AUTO = "auto"


def available_devices() -> list[str]:
    """The device names this machine accepts besides "auto"."""
    names = ["cpu"]
    if torch.backends.mps.is_available():
        names.append("mps")
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return names


def resolve_device(name: str | torch.device | None, local_rank: int | None = None) -> torch.device:
    """`name` as a torch device this machine has: None or "auto" give cuda when available (this
    process's GPU `cuda:LOCAL_RANK` when a launcher gives `local_rank`), else cpu; "cpu", "cuda",
    "cuda:N" and "mps" are checked against the hardware and the torch build.

    Raises InvalidInputError naming `name` and the accepted choices for an unknown name, a device
    type synthface does not run on, or one this machine or torch build lacks.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == AUTO):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    choices = ", ".join([AUTO, *available_devices()])
    try:
        device = torch.device(name.strip().lower() if isinstance(name, str) else name)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidInputError(
            f"Unknown device {str(name)!r}. Choose one of: {choices} (auto picks cuda when a GPU is usable)."
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "sees no usable GPU"
            raise InvalidInputError(
                f"Device {str(name)!r} is not available: this torch build ({torch.__version__}) {build}. "
                f"Choose one of: {choices}; for a GPU, install a CUDA build of torch on a machine with an NVIDIA GPU."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"Device {str(name)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s). Choose one of: {choices}."
            )
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise InvalidInputError(f"Device {str(name)!r} is not supported on this machine. Choose one of: {choices}.")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (a CUDA GPU's free memory, else the host's
    MemAvailable), or None where the platform does not say."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def format_bytes(count: float) -> str:
    """`count` bytes in words, e.g. "3.2 GB" (decimal units, like df -H)."""
    units = ("B", "KB", "MB", "GB", "TB", "PB", "EB")
    value, step = float(count), 0
    while value >= 1000 and step < len(units) - 1:
        value, step = value / 1000, step + 1
    return f"{value:.0f} B" if step == 0 else f"{value:.1f} {units[step]}"
