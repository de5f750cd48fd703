"""Samples for the export tests: distinct small face-sized JPEGs with the engine's metadata fields."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from synthface.export import Sample

_JPEGS: list[bytes] = []


def jpegs(n: int) -> list[bytes]:
    """n distinct small face-sized JPEGs (cached: encoding is the slow part)."""
    rng = np.random.default_rng(0)
    while len(_JPEGS) < n:
        pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=80)
        _JPEGS.append(buf.getvalue())
    return _JPEGS[:n]


def make_samples(identities: int = 5, per_identity: int = 4) -> list[Sample]:
    data = jpegs(identities * per_identity)
    return [
        Sample(i, f"{i:07d}_{j:04d}", data[i * per_identity + j],
               {"identity": i, "image": j, "seed": 1000 * i + j, "filter_cos": float("nan") if j == 0 else 0.5})
        for i in range(identities) for j in range(per_identity)
    ]
