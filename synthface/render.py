"""Moved: the renderer contract lives in `synthface.generators.base`, the registry in `synthface.generators.registry`."""

from synthface.generators import *  # noqa: F403
from synthface.generators import __all__  # noqa: F401
