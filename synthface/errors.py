"""Typed errors whose messages are one readable paragraph: what went wrong and how to fix it.

The CLI turns any `SynthfaceError` into that paragraph on stderr and the error's `exit_code`,
never a traceback.
"""


class SynthfaceError(Exception):
    """Base class: a user-facing problem with a one-paragraph explanation."""

    exit_code = 2


class InvalidInputError(SynthfaceError, ValueError):
    """An argument or a file's content is outside what the function accepts."""


class InfeasibleThresholdError(SynthfaceError):
    """Sampling cannot reach the requested count under the requested cosine threshold."""

    exit_code = 3

    def __init__(self, message: str, *, reached: int, feasible_max_cos: float):
        super().__init__(message)
        self.reached = reached
        self.feasible_max_cos = feasible_max_cos


class FileFormatError(SynthfaceError):
    """A file is missing, empty, truncated or not in the expected format."""


class OutputPathError(SynthfaceError, OSError):
    """An output location cannot be written (missing or read-only folder, full disk)."""


class ImageError(SynthfaceError):
    """An image cannot be read or is not usable (unreadable, empty, too many pixels, bad mode)."""

    exit_code = 4


class NoFaceError(SynthfaceError):
    """No face was found in an image."""

    exit_code = 5


class ModelNotFoundError(SynthfaceError):
    """Model weights are not available locally; the message names the command that fetches them."""

    exit_code = 6


class DeviceMemoryError(SynthfaceError, MemoryError):
    """The accelerator ran out of memory; the message suggests a smaller batch or a memory option."""

    exit_code = 7


class RunLockedError(SynthfaceError):
    """Another process holds the run folder (or this rank of it); the message names the holder."""

    exit_code = 8


class RunInterruptedError(SynthfaceError):
    """Ctrl-C stopped a resumable run; the message says "aborted; rerun to resume" (printed without "error:")."""

    exit_code = 130


class EmptyDatasetError(SynthfaceError):
    """A run kept no image at all; the message gives the drop reasons and where the manifest is."""

    exit_code = 9


class BalanceError(SynthfaceError):
    """The kept identities miss an identities.balance target after the resampling rounds; the message names
    the bin (`bin`: "gender=male", "age=30-80") and why."""

    exit_code = 10

    def __init__(self, message: str, *, bin: str = ""):
        super().__init__(message)
        self.bin = bin
