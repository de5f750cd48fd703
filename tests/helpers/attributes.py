"""A test-double attribute analyser, "known-people": it knows the apparent age and gender of the six
people of t1.jpg that the engine tests' PhotoRenderer draws (`KNOWN`, assigned here: a stand-in, not a
measurement) and tells which of them an image shows by matching it against their photos (flip- and
brightness-invariant), so a run's attributes are known before it starts.

Importing this module registers it (synthface.faces.attributes' registry).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthface.faces.attributes import Attributes, register_attribute_analyzer

NAME = "known-people"
#: Person (t1.jpg's faces, left to right: tests.helpers.engine.face_crops) -> (age, gender).
KNOWN = {0: (24.0, "female"), 1: (61.0, "male"), 2: (33.0, "female"), 3: (27.0, "male"), 4: (52.0, "female"),
         5: (40.0, "male")}
_SIDE = 24


def _signature(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    grey = np.asarray(Image.fromarray(image).convert("L").resize((_SIDE, _SIDE), Image.BILINEAR), dtype=np.float64)
    grey -= grey.mean()
    return grey / (np.linalg.norm(grey) + 1e-9)


class KnownPeople:
    """Attributes of the t1.jpg person each image shows (one per given box, the box echoed)."""

    name = NAME
    license = "test double (no model)"
    license_restricted = False
    measures = ("age", "gender")

    def __init__(self, known: dict[int, tuple[float, str]] | None = None):
        from tests.helpers.engine import face_crops

        self.known = known or KNOWN
        crops = face_crops()
        self.references = [(_signature(c), _signature(c[:, ::-1].copy())) for c in crops]
        self.calls: list[list] = []  # the boxes of each call

    def person(self, image: np.ndarray) -> int:
        sig = _signature(image)
        scores = [max(float(np.sum(sig * a)), float(np.sum(sig * b))) for a, b in self.references]
        return int(np.argmax(scores))

    def analyze(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence] | None = None) -> list[list[Attributes]]:
        self.calls.append(None if boxes is None else [list(b) for b in boxes])
        out = []
        for k, image in enumerate(images):
            given = [(0.0, 0.0, float(image.shape[1]), float(image.shape[0]))] if boxes is None else boxes[k]
            age, gender = self.known[self.person(image)]
            out.append([Attributes(tuple(box), age, 0.8, gender, 0.9) for box in given])
        return out


@register_attribute_analyzer(NAME)
def _known_people(**options) -> KnownPeople:
    return KnownPeople(**options)
