"""Moved: the demo's page lives in `synthface.demo.page` (this old name is that module itself)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("synthface.demo.page")
