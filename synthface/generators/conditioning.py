"""What a family's ID vectors come from: its conditioning recogniser, found locally, as a conditioner.

A conditioner maps photos and their detected faces to unit ID vectors, `conditioner(images, faces)
-> (N, D) float32`. Each family declares its recognisers (`GeneratorFamily.recognisers`, registry
names, first choice first); `conditioner_for` builds the first one found locally. The ONNX ArcFace
conditioner here is the default for any insightface-style recogniser (`.onnx`); a family whose
recogniser is another kind builds its own (`GeneratorFamily.recogniser_conditioner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.errors import ModelNotFoundError


class ArcFaceConditioner:
    """Conditioning vectors from an ONNX ArcFace recogniser, on crops aligned from `face.kps`."""

    name = "arcface"

    def __init__(self, recognizer, note: str = "") -> None:
        self.recognizer, self.note = recognizer, note

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence) -> np.ndarray:
        from synthface.faces import norm_crop

        size = self.recognizer.input_size
        return self.recognizer(np.stack([norm_crop(im, f.kps, size) for im, f in zip(images, faces)]))


def onnx_conditioner(path: Path, analyzer, note: str = "") -> ArcFaceConditioner:
    """An `ArcFaceConditioner` over the ONNX recogniser at `path`, sharing the analyser's when it runs
    that same file (then the judge and the conditioning share one space)."""
    rec = getattr(analyzer, "recognizer", None)
    if rec is not None and Path(getattr(rec, "path", "")) == Path(path):
        return ArcFaceConditioner(rec, note)
    from synthface.faces.onnx_backend import ArcFaceRecognizer

    return ArcFaceConditioner(ArcFaceRecognizer(path), note)


def conditioner_for(family, model: str, analyzer, *, allow_pickle: bool | None = None):
    """The conditioner of `model`: the first recogniser of `family.conditioning(model)` found locally,
    built by `family.recogniser_conditioner` and carrying `family.conditioning_note` for a fallback.
    ModelNotFoundError, naming every choice and how to fetch the first, when none is found."""
    from synthface import weights

    names = family.conditioning(model)
    error = None
    for name in names:
        try:
            path = weights.find(name)
        except ModelNotFoundError as exc:
            error = exc
            continue
        return family.recogniser_conditioner(name, path, analyzer, allow_pickle=allow_pickle,
                                             note=family.conditioning_note(model, name))
    choices = " or, failing that, ".join(names) or "no recogniser (the family declares none)"
    fetch = f" Run `synthface models download {names[0]}`." if names else ""
    raise ModelNotFoundError(
        f"The {model} model is conditioned on ID vectors from {choices}; none is installed.{fetch}"
        f"{f' {error}' if error else ''}"
    )
