"""Vec2Face's tiny random models ("vec2face-tiny", "vec2face-plus-tiny") and the deterministic
weight rule of VEC2FACE.md (`deterministic_tensor`) that fills them and the full-size golden model.
"""

from __future__ import annotations

import math

import torch

from synthface.generators.testing import deterministic_state_dict as _shared_state_dict
from synthface.generators.testing import deterministic_tensor as _shared_rule

#: Keys whose deterministic test weights are 0.02 z (position tables), per VEC2FACE.md's rule.
_POSITION_KEYS = {"decoder_pos_embed_learned": 0.02, "token_emb.position_embeddings.weight": 0.02}


def deterministic_tensor(key: str, shape) -> torch.Tensor:
    """VEC2FACE.md's deterministic weight for `key`: the shared rule of `synthface.generators.testing`
    (crc32(key)-seeded z; 1-D: 1 + 0.1z for a "weight" else 0.1z; others z / sqrt(fan-in)) with the
    position tables at 0.02z, and `position_ids` as arange."""
    shape = tuple(shape)
    if key.endswith("position_ids"):
        return torch.arange(math.prod(shape)).reshape(shape)
    return _shared_rule(key, shape, scaled_keys=_POSITION_KEYS)


def deterministic_state_dict(module_or_shapes) -> dict[str, torch.Tensor]:
    """Every entry of a module's state dict (or of a {key: shape} mapping) by `deterministic_tensor`."""
    return _shared_state_dict(module_or_shapes, rule=deterministic_tensor)


#: The tiny Vec2Face: every published module and code path, 64-wide transformer, 32-channel decoder.
TINY_VEC2FACE = dict(embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                     decoder_channels=32, num_res_blocks=1, z_channels=32)


def tiny_vec2face_pipeline(*, plus: bool = False, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A `Vec2FacePipeline` at `TINY_VEC2FACE` size with `deterministic_tensor` weights (512-d IDs in,
    112x112 out); `plus=True` adds rank-4 LoRA adapters (alpha 32) and a pose model, as Vec2Face+'s pose file."""
    from synthface.generators.vec2face.model import PoseConditionModel, Vec2FaceModel
    from synthface.generators.vec2face.pipeline import Vec2FacePipeline

    return vec2face_pipeline_from_rule(Vec2FaceModel(**TINY_VEC2FACE, lora_rank=4 if plus else 0),
                                       PoseConditionModel(dim=TINY_VEC2FACE["embed_dim"]) if plus else None,
                                       device=device, dtype=dtype, pipeline_class=Vec2FacePipeline)


def vec2face_pipeline_from_rule(vec2face, pose_model, *, device, dtype, pipeline_class):
    """Fill the modules with `deterministic_state_dict` weights (strict) and wrap them in a pipeline."""
    for module in (vec2face, pose_model):
        if module is not None:
            module.load_state_dict(deterministic_state_dict(module), strict=True, assign=True)
            module.eval()
    pipe = pipeline_class(vec2face=vec2face, pose_model=pose_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device) if pipe.dtype == dtype else pipe.to(device=device, dtype=dtype)
