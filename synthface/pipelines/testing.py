"""Moved: the tiny models live in `synthface.generators.<family>.tiny`, the helpers in `.testing`."""

from synthface.generators.arc2face.testing import (  # noqa: F401
    full_size_arc2face_pipeline,
    measure_throughput,
    save_tiny_published_layout,
)
from synthface.generators.arc2face.tiny import TINY_SIZE, tiny_arc2face_pipeline, tiny_components  # noqa: F401
from synthface.generators.vec2face.testing import full_size_vec2face_pipeline  # noqa: F401
from synthface.generators.vec2face.tiny import deterministic_tensor, tiny_vec2face_pipeline  # noqa: F401
