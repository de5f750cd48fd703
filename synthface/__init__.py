"""synthface: identity-conditioned synthetic face datasets.

Light names are imported eagerly; those that pull in torch/diffusers/onnxruntime load on first use,
so `import synthface` and the CLI's `--help` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "IdentityBank": "synthface.identity",
    "sample_identities": "synthface.identity",
    "verify": "synthface.identity",
    "perturb": "synthface.identity",
    "mixture_cosines": "synthface.identity",
    "bounded_perturb": "synthface.identity",
    "load_bank": "synthface.identity",
    "Arc2FacePipeline": "synthface.generators.arc2face.pipeline",
    "Arc2FacePipelineOutput": "synthface.generators.arc2face.pipeline",
    "load_arc2face": "synthface.generators.arc2face.loading",
    "Vec2FacePipeline": "synthface.generators.vec2face.pipeline",
    "Vec2FacePipelineOutput": "synthface.generators.vec2face.pipeline",
    "load_vec2face": "synthface.generators.vec2face.loading",
    "IDiffFacePipeline": "synthface.generators.idiff.pipeline",
    "IDiffFacePipelineOutput": "synthface.generators.idiff.pipeline",
    "load_idiff": "synthface.generators.idiff.loading",
    "build_renderer": "synthface.generators",
    "Face": "synthface.faces",
    "get_analyzer": "synthface.faces",
    "load_image": "synthface.faces",
    "FilterConfig": "synthface.filtering",
    "filter_candidates": "synthface.filtering",
    "Recipe": "synthface.recipe",
    "load_recipe": "synthface.recipe",
    "resolve_recipe": "synthface.recipe",
    "shipped_recipes": "synthface.recipe",
    "compute_report": "synthface.report",
    "write_report": "synthface.report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synthface' has no attribute {name!r}")
