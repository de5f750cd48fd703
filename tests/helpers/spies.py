"""Test doubles around real pipelines."""

from __future__ import annotations


class SpyPipeline:
    """The real pipeline, recording the keyword arguments of every call."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)
