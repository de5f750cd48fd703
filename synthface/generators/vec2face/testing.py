"""Vec2Face test helpers: the published architecture with VEC2FACE.md's deterministic weights (the
golden-value model). The tiny models and the weight rule are `tiny`.
"""

from __future__ import annotations

import torch

from synthface.generators.vec2face.tiny import vec2face_pipeline_from_rule


def full_size_vec2face_pipeline(*, plus: bool = False, device: str | torch.device = "cpu",
                                dtype: torch.dtype = torch.float32):
    """The published architecture (174M parameters; with `plus`, Vec2Face+'s LoRA and pose model)
    with `deterministic_tensor` weights: the golden-value model of VEC2FACE.md. Output is not a face."""
    from synthface.generators.vec2face.model import PoseConditionModel, Vec2FaceModel
    from synthface.generators.vec2face.pipeline import Vec2FacePipeline

    with torch.device("meta"):
        vec2face = Vec2FaceModel(lora_rank=8 if plus else 0)
        pose_model = PoseConditionModel() if plus else None
    return vec2face_pipeline_from_rule(vec2face, pose_model, device=device, dtype=dtype, pipeline_class=Vec2FacePipeline)
