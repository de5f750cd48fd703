"""What every family's tests share: each registered family's tiny models (`tiny_models`), the models
that render with no files, for tests and smoke runs. A family's own test helpers live in its folder
(`synthface.generators.<family>.testing`); tests/helpers/family_tests.py runs the shared checks.
"""

from __future__ import annotations


def tiny_models() -> list[tuple[str, str]]:
    """(family name, model) for every random-weight model a registered family declares, in order."""
    from synthface.generators.registry import families

    return [(family.name, model) for family in families() for model in family.random_models]
