"""Diffusers pipelines that render identities: Arc2Face, and tiny random versions for tests."""

from synthface.pipelines.arc2face import Arc2FacePipeline, Arc2FacePipelineOutput
from synthface.pipelines.loading import load_arc2face

__all__ = ["Arc2FacePipeline", "Arc2FacePipelineOutput", "load_arc2face"]
