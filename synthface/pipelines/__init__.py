"""Diffusers pipelines that render identities: Arc2Face, Vec2Face(+), and tiny random versions for tests."""

from synthface.pipelines.arc2face import Arc2FacePipeline, Arc2FacePipelineOutput
from synthface.pipelines.loading import load_arc2face, load_vec2face
from synthface.pipelines.vec2face import MASK_PRESETS, MaskRatio, Vec2FacePipeline, Vec2FacePipelineOutput
from synthface.pipelines.vec2face_pose import SixDRepNet, load_sixdrepnet

__all__ = [
    "Arc2FacePipeline",
    "Arc2FacePipelineOutput",
    "MASK_PRESETS",
    "MaskRatio",
    "SixDRepNet",
    "Vec2FacePipeline",
    "Vec2FacePipelineOutput",
    "load_arc2face",
    "load_sixdrepnet",
    "load_vec2face",
]
