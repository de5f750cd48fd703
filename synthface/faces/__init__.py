"""Face analysis: detect, align to the ArcFace template, embed; one interchangeable backend per name.

    from synthface.faces import get_analyzer, load_image
    faces = get_analyzer("dlib").analyze([load_image("photo.jpg")])[0]   # largest face first

Backends are a registry (`register_analyzer`, `available_analyzers`): "dlib" (offline default) and
"insightface" (SCRFD detection + an ArcFace ONNX recogniser such as antelopev2's or Arc2Face's
`arcface.onnx`). Each analyser declares its same-person cosine, licence (from synthface.weights)
and embedding space (see FaceAnalyzer); nothing else in synthface looks at its name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from synthface.errors import InvalidInputError
from synthface.faces.align import ARCFACE_TEMPLATE, estimate_similarity, norm_crop, norm_crop_torch
from synthface.faces.dlib_backend import DLIB_SAME_PERSON_COS, DLIB_SAME_PERSON_DISTANCE
from synthface.faces.image import MAX_PIXELS, as_rgb_uint8, load_image
from synthface.faces.onnx_backend import ARCFACE_SAME_PERSON_COS
from synthface.faces.types import Face, FaceAnalyzer, check_analyzer, l2_normalize

DEFAULT_BACKEND = "dlib"

_REGISTRY: dict[str, Callable[..., FaceAnalyzer]] = {}


def register_analyzer(name: str):
    """Decorator: make a factory available to `get_analyzer(name)`."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


@register_analyzer("dlib")
def _dlib(**kwargs) -> FaceAnalyzer:
    from synthface.faces.dlib_backend import DlibAnalyzer

    return build_analyzer(DlibAnalyzer, kwargs)


@register_analyzer("insightface")
def _insightface(**kwargs) -> FaceAnalyzer:
    from synthface.faces.onnx_backend import InsightFaceAnalyzer

    return build_analyzer(InsightFaceAnalyzer, kwargs)


def build_analyzer(cls: type, options: dict) -> FaceAnalyzer:
    """`cls(**options)`, refusing an option `cls` does not take with an InvalidInputError that
    lists the ones it does (the analyser itself checks each value's type and range)."""
    params = inspect.signature(cls).parameters
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidInputError(
            f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for the {cls.name} face analyser; "
            f"it accepts: {', '.join(accepted)}. Check the spelling in analyzer_options."
        )
    return cls(**options)


def available_analyzers() -> list[str]:
    return sorted(_REGISTRY)


def get_analyzer(name: str = DEFAULT_BACKEND, **kwargs) -> FaceAnalyzer:
    """Build the analyser registered as `name` with backend-specific keyword arguments.

    Raises InvalidInputError for an unknown name, an option the backend does not take (naming the
    ones it does) or an option value of the wrong type or range.
    """
    return _REGISTRY[require_registered(name)](**kwargs)


def require_registered(name: str) -> str:
    """`name` when an analyser is registered under it, else InvalidInputError listing the registered ones
    (what the CLI checks before loading anything)."""
    if name not in _REGISTRY:
        raise InvalidInputError(
            f"Unknown face backend {name!r}; choose one of: {', '.join(available_analyzers())}."
        )
    return name


__all__ = [
    "ARCFACE_SAME_PERSON_COS",
    "ARCFACE_TEMPLATE",
    "DEFAULT_BACKEND",
    "DLIB_SAME_PERSON_COS",
    "DLIB_SAME_PERSON_DISTANCE",
    "MAX_PIXELS",
    "Face",
    "FaceAnalyzer",
    "as_rgb_uint8",
    "available_analyzers",
    "build_analyzer",
    "check_analyzer",
    "estimate_similarity",
    "get_analyzer",
    "l2_normalize",
    "load_image",
    "norm_crop",
    "norm_crop_torch",
    "register_analyzer",
    "require_registered",
]
