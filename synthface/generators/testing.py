"""What every family's tests share: each registered family's tiny models (`tiny_models`), the models
that render with no files, for tests and smoke runs, and the deterministic weight rule the families'
golden values are recorded with (`deterministic_tensor`, `deterministic_state_dict`). A family's own
test helpers live in its folder (`synthface.generators.<family>.testing`); tests/helpers/family_tests.py
runs the shared checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def tiny_models() -> list[tuple[str, str]]:
    """(family name, model) for every random-weight model a registered family declares, in order."""
    from synthface.generators.registry import families

    return [(family.name, model) for family in families() for model in family.random_models]


def deterministic_tensor(key: str, shape, *, scaled_keys: Mapping[str, float] = {}):
    """The golden weight rule (VEC2FACE.md, IDIFF.md) for state-dict entry `key`: z = randn(shape) from a
    CPU generator seeded by crc32(key); keys in `scaled_keys` get factor * z (Vec2Face's position tables:
    0.02); 1-D tensors 1 + 0.1 z when the key ends in "weight", else 0.1 z; all others z / sqrt(numel /
    shape[0]). float32."""
    import zlib

    import torch

    shape = tuple(shape)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
    if key in scaled_keys:
        return scaled_keys[key] * z
    if len(shape) == 1:
        return 1 + 0.1 * z if key.endswith("weight") else 0.1 * z
    return z / math.sqrt(math.prod(shape) / shape[0])


def deterministic_state_dict(module_or_shapes, *, scaled_keys: Mapping[str, float] = {}, rule=None) -> dict:
    """Every entry of a module's state dict (or of a {key: shape} mapping) by `deterministic_tensor`
    (or by `rule(key, shape)` where a family adds entries of its own, e.g. Vec2Face's `position_ids`)."""
    import torch

    if isinstance(module_or_shapes, torch.nn.Module):
        module_or_shapes = {k: v.shape for k, v in module_or_shapes.state_dict().items()}
    if rule is None:
        return {k: deterministic_tensor(k, shape, scaled_keys=scaled_keys) for k, shape in module_or_shapes.items()}
    return {k: rule(k, shape) for k, shape in module_or_shapes.items()}
