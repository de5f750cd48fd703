"""Identities for the demo: from uploaded photos (read within bounds, the largest face of each,
averaged in both spaces) or drawn at random from the prior."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthface.demo.conditioning import CONDITIONING_DIM
from synthface.errors import ImageError, InvalidInputError, NoFaceError

#: Largest upload accepted (enforced by the server on upload and again before reading).
MAX_UPLOAD_MB = 15
#: Largest photo accepted, in pixels (checked from the header, before decoding).
MAX_PHOTO_PIXELS = 40_000_000
#: Photos are downscaled to this longest side before face detection (speed; faces stay large).
ANALYSIS_SIDE = 1600
MAX_PHOTOS = 10


@dataclass
class Identity:
    """What the generator is conditioned on and what its images are measured against.

    vector: unit (512,) conditioning vector. reference: unit vector in the analyser's space, or
    None (random identity in another space: images are measured against their own centre).
    crops: the aligned 112 x 112 faces used. notes: messages for the user (several faces, ...).
    """

    vector: np.ndarray
    reference: np.ndarray | None
    crops: list[np.ndarray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)


def read_photo(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """An uploaded photo as RGB uint8, downscaled to ANALYSIS_SIDE for analysis.

    Bounds: at most MAX_UPLOAD_MB on disk and MAX_PHOTO_PIXELS pixels, at most MAX_ASPECT_RATIO:1
    (checked from the header before decoding; ImageError otherwise), so the analyser then works
    on at most ANALYSIS_SIDE x ANALYSIS_SIDE pixels.
    """
    name = name or Path(path).name
    try:
        size = os.path.getsize(path)
    except OSError:
        raise ImageError(f"Cannot read {name}: the upload is missing. Upload it again.") from None
    if size > MAX_UPLOAD_MB * 1024 * 1024:
        raise ImageError(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB. Use a smaller photo.")
    try:
        image = _load(path)
    except ImageError as exc:
        raise ImageError(str(exc).replace(str(path), name)) from None
    return _downscale(image, ANALYSIS_SIDE)


def _load(path) -> np.ndarray:
    from synthface.faces import load_image

    return load_image(path, max_pixels=MAX_PHOTO_PIXELS)


def _downscale(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    from PIL import Image

    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def identity_from_photos(paths: Sequence[str | os.PathLike], analyzer, conditioner) -> Identity:
    """Average the largest face of each photo into one identity (both spaces), with the crops used."""
    from synthface.faces import l2_normalize, norm_crop

    if not paths:
        raise InvalidInputError("Upload at least one photo of the person, or use Random identity.")
    if len(paths) > MAX_PHOTOS:
        raise InvalidInputError(f"{len(paths)} photos uploaded; use at most {MAX_PHOTOS} of one person.")
    names = [Path(p).name for p in paths]
    images = [read_photo(p, n) for p, n in zip(paths, names)]
    found = analyzer.analyze(images, all_faces=True)
    notes, faces = [], []
    for name, image_faces in zip(names, found):
        if not image_faces:
            raise NoFaceError(
                f"No face found in {name}. Use a photo where the face is clearly visible, frontal and not too "
                "small; if the face fills the frame, use a wider crop that shows the whole head and some background."
            )
        if len(image_faces) > 1:
            notes.append(f"{name} shows {len(image_faces)} faces; the largest one was used.")
        faces.append(image_faces[0])
    vectors = conditioner(images, faces)
    reference = l2_normalize(np.mean(l2_normalize(np.stack([f.embedding for f in faces])), axis=0))
    return Identity(
        vector=l2_normalize(vectors.mean(axis=0)),
        reference=reference,
        crops=[norm_crop(im, f.kps, 112) for im, f in zip(images, faces)],
        notes=notes,
        source={"kind": "photos", "photos": names},
    )


def random_identity(seed: int, analyzer, conditioner) -> Identity:
    """An identity drawn from the isotropic prior with `seed`; judged against the ID vector only when
    the analyser embeds into the conditioning space (same recogniser), else against the batch centre."""
    from synthface.identity import isotropic_prior

    # One draw needs no separation check: sample_identities would draw a whole candidate batch.
    vector = isotropic_prior(CONDITIONING_DIM).draw(np.random.default_rng(int(seed)), 1)[0]
    shared = getattr(conditioner, "recognizer", None)
    same_space = shared is not None and shared is getattr(analyzer, "recognizer", None)
    return Identity(vector=vector, reference=vector if same_space else None, source={"kind": "random", "seed": int(seed)})
