"""Moved: the pipelines live in `synthface.generators.<family>`; these are their documented old names."""

from synthface.generators.arc2face.loading import load_arc2face
from synthface.generators.arc2face.pipeline import Arc2FacePipeline, Arc2FacePipelineOutput
from synthface.generators.idiff.loading import load_idiff
from synthface.generators.idiff.pipeline import IDiffFacePipeline, IDiffFacePipelineOutput
from synthface.generators.vec2face.loading import load_vec2face
from synthface.generators.vec2face.pipeline import MASK_PRESETS, MaskRatio, Vec2FacePipeline, Vec2FacePipelineOutput
from synthface.generators.vec2face.pose import SixDRepNet, load_sixdrepnet

__all__ = [
    "Arc2FacePipeline",
    "Arc2FacePipelineOutput",
    "IDiffFacePipeline",
    "IDiffFacePipelineOutput",
    "MASK_PRESETS",
    "MaskRatio",
    "SixDRepNet",
    "Vec2FacePipeline",
    "Vec2FacePipelineOutput",
    "load_arc2face",
    "load_idiff",
    "load_sixdrepnet",
    "load_vec2face",
]
