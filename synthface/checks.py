"""Argument checks and error-message helpers shared by every module.

Each check refuses a value with an InvalidInputError whose message names the argument, the range it
must lie in and what was given, so every module words the same mistake the same way.
"""

from __future__ import annotations

import math

import numpy as np

from synthface.errors import InvalidInputError


def is_int(value) -> bool:
    """Whether `value` is a Python or numpy integer (booleans are not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, low: int, high: int | None, *, why: str = "") -> None:
    """`value` is an int (not a bool) in [low, high]; else an InvalidInputError naming the bound."""
    if is_int(value) and value >= low and (high is None or value <= high):
        return
    bound = f"from {low} to {high}" if high is not None else f"{low} or more"
    raise InvalidInputError(f"{name} must be an integer {bound}, got {value!r}{f' ({why})' if why else ''}.")


def check_real(name: str, value, low: float, high: float, *, why: str = "") -> None:
    """`value` is a finite real number in [low, high]; NaN and inf are refused by name."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok and math.isfinite(value) and low <= value <= high:
        return
    raise InvalidInputError(
        f"{name} must be a finite number from {low:g} to {high:g}, got {value!r}{f' ({why})' if why else ''}."
    )


def check_positive_int(name: str, value) -> None:
    """`value` is an integer (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")


def check_seed(seed, name: str = "seed (--seed)") -> None:
    """`seed` is a non-negative integer (not a bool)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"{name} must be a non-negative integer, got {seed!r}.")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message without its closing full stop (its type name when
    it has no message), to quote inside a sentence of our own."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
