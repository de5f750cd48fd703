"""The names `synthface` re-exports resolve to the objects of the modules that define them."""

import importlib

import synthface


def test_every_lazy_export_resolves():
    for name, module in synthface._LAZY.items():
        assert getattr(synthface, name) is getattr(importlib.import_module(module), name), name
    assert set(synthface._LAZY) <= set(synthface.__all__)
