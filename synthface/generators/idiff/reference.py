"""Replaying the published scripts' randomness: `seed_like_script` leaves torch's global generator
exactly where UIFace's / IDperturb's / IDiff-Face's `sample.py` leaves it just before its first noise
draw, so `IDiffFacePipeline(..., rng="reference")` then draws the published images seed for seed.

The scripts seed everything with `seed * (1 + rank)` (pytorch-lightning's `seed_everything`: Python's
`random`, numpy and torch), then build their modules, which consumes the generator: the UNet, then the
VQ encoder and decoder (`script_draws.json`: the [op, numel] list of those draws, 811 for UIFace's
UNet with its learned empty context, 810 for IDiff-Face's), then `np.random.seed(1337)`. Replaying the
draws on scratch tensors leaves the same generator state as building the modules; `IDiffUNet()` itself
consumes exactly the UNet's share of them (tests/generators/idiff/test_reference.py checks it).
Defaults per script: UIFace 41, IDiff-Face 42, NegFaceDiff 42, IDperturb 1205 (`SCRIPT_SEEDS`).
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

import numpy as np
import torch

from synthface.errors import InvalidInputError

#: The scripts' default seeds.
SCRIPT_SEEDS = {"uiface": 41, "idperturb": 1205, "idiff_face": 42, "negfacediff": 42}
#: Which module set each script builds: UIFace and IDperturb build UIFace's UNet (learned empty context).
SCRIPT_MODULES = {"uiface": "uiface", "idperturb": "uiface", "idiff_face": "idiff_face", "negfacediff": "idiff_face"}
#: The seed the scripts give numpy after building the modules (unused afterwards).
NUMPY_AFTER_BUILD = 1337
DRAWS_FILE = Path(__file__).with_name("script_draws.json")


@cache
def script_draws(modules: str) -> tuple[tuple[str, int], ...]:
    """The [op, numel] draws of building `modules` ("uiface" or "idiff_face")."""
    table = json.loads(DRAWS_FILE.read_text())
    return tuple((op, int(n)) for op, n in table[modules])


def seed_like_script(script: str = "uiface", seed: int | None = None, *, rank: int = 0) -> None:
    """Seed Python's `random`, numpy and torch's global generator as `script`'s sample.py does at `seed`
    (None: its default, `SCRIPT_SEEDS`) on `rank`, and consume the draws its module construction makes,
    so the next `torch.randn` is the script's first noise draw. Takes ~2 s (271.6 M numbers)."""
    if script not in SCRIPT_MODULES:
        raise InvalidInputError(f"script must be one of {', '.join(SCRIPT_MODULES)}, got {script!r}.")
    if seed is None:
        seed = SCRIPT_SEEDS[script]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise InvalidInputError(f"seed and rank must be non-negative integers, got seed={seed!r}, rank={rank!r}.")
    full = seed * (1 + rank)
    random.seed(full)
    np.random.seed(full % 2**32)
    torch.manual_seed(full)
    for op, numel in script_draws(SCRIPT_MODULES[script]):
        scratch = torch.empty(numel)
        scratch.uniform_() if op == "u" else scratch.normal_()
    np.random.seed(NUMPY_AFTER_BUILD)
