"""Identity-conditioned generators: one `Renderer` contract, a registry of families, one folder per family.

`build_renderer(model)` loads any model a registered family declares (or a local path one claims)
as a `Renderer`; `register_generator` / `register_family` add a family in code, and the entry-point
group "synthface.generators" adds one from another package (see `registry`).
"""

from synthface.generators.base import (
    DTYPES,
    MAX_SEED,
    OPTIONS,
    GeneratorFamily,
    Optimizations,
    Renderer,
    RendererLike,
    RenderFunction,
    RenderSettings,
    check_images,
    image_generators,
    renderer_name,
    resolve_dtype,
    to_uint8,
)
from synthface.generators.registry import (
    ENTRY_POINT_GROUP,
    build_renderer,
    default_family,
    families,
    families_with,
    family_for,
    family_of_pipeline,
    generator_names,
    model_licence,
    register_family,
    register_generator,
)

__all__ = [
    "DTYPES", "ENTRY_POINT_GROUP", "MAX_SEED", "OPTIONS", "GeneratorFamily", "Optimizations", "RenderFunction",
    "RenderSettings", "Renderer", "RendererLike", "build_renderer", "check_images", "default_family", "families",
    "families_with", "family_for", "family_of_pipeline", "generator_names", "image_generators", "model_licence",
    "register_family", "register_generator", "renderer_name", "resolve_dtype", "to_uint8",
]
