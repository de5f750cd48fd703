"""Argument checks: one wording per mistake, naming the argument, the range and what was given."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.checks import check_int, check_positive_int, check_real, check_seed, first_line
from synthface.errors import InvalidInputError


def test_check_int_and_check_real_name_the_bound():
    check_int("steps", np.int64(3), 1, 10)
    check_real("scale", 2, 0.0, 5.0)
    with pytest.raises(InvalidInputError, match=r"^steps must be an integer from 1 to 10, got True \(a cap\)\.$"):
        check_int("steps", True, 1, 10, why="a cap")
    with pytest.raises(InvalidInputError, match=r"^k must be an integer 1 or more, got 0\.$"):
        check_int("k", 0, 1, None)
    with pytest.raises(InvalidInputError, match=r"^eta must be a finite number from 0 to 1, got nan\.$"):
        check_real("eta", float("nan"), 0.0, 1.0)


def test_positive_int_seed_and_first_line():
    with pytest.raises(InvalidInputError, match=r"^n must be a positive integer, got 0\.$"):
        check_positive_int("n", 0)
    with pytest.raises(InvalidInputError, match=r"^seed \(--seed\) must be a non-negative integer, got -1\.$"):
        check_seed(-1)
    assert first_line(ValueError("Bad header.\nmore detail")) == "Bad header"
    assert first_line(KeyError()) == "KeyError"
