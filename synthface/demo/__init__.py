"""The identity-customisation demo: `session` (DemoSession), `photos`, `conditioning`, `page` (Gradio).

The names below are the demo's public face, as `synthface.demo` documented them before it became a
package; the page is `synthface.demo.page` (also importable as `synthface.demo_page`).
"""

from synthface.demo.conditioning import (
    CONDITIONER_SHORT,
    CONDITIONING_DIM,
    STANDIN_NOTE,
    STANDIN_SEED,
    STANDIN_SHORT,
    StandInConditioner,
    make_conditioner,
    standin_projection,
)
from synthface.demo.photos import (
    ANALYSIS_SIDE,
    MAX_PHOTO_PIXELS,
    MAX_PHOTOS,
    MAX_UPLOAD_MB,
    Identity,
    identity_from_photos,
    random_identity,
    read_photo,
)
from synthface.demo.session import (
    ANALYZER_WEIGHTS,
    KEEP_OUTPUTS_S,
    MAX_IMAGES,
    DemoSession,
    Rendered,
    Settings,
    check_analyzer_options,
    default_model,
    generator_weights,
    installed_models,
    is_random_model,
    judge,
    lcm_available,
    missing_weights,
    new_seed,
    require_model_weights,
    sampler_settings,
    weights_notice,
)

__all__ = [
    "ANALYSIS_SIDE", "ANALYZER_WEIGHTS", "CONDITIONER_SHORT", "CONDITIONING_DIM", "KEEP_OUTPUTS_S", "MAX_IMAGES",
    "MAX_PHOTOS", "MAX_PHOTO_PIXELS", "MAX_UPLOAD_MB", "STANDIN_NOTE", "STANDIN_SEED", "STANDIN_SHORT", "DemoSession",
    "Identity", "Rendered", "Settings", "StandInConditioner", "check_analyzer_options", "default_model",
    "generator_weights", "identity_from_photos", "installed_models", "is_random_model", "judge", "lcm_available",
    "make_conditioner", "missing_weights", "new_seed", "random_identity", "read_photo", "require_model_weights",
    "sampler_settings", "standin_projection", "weights_notice",
]
