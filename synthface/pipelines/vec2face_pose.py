"""Moved: this module lives in `synthface.generators.vec2face.pose` (this old name is that module itself)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("synthface.generators.vec2face.pose")
