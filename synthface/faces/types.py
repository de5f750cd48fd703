"""The face record every backend returns, and the protocol a face analyser implements.

Backends differ in how they find landmarks and which network embeds the crop; everything after
detection (alignment to the ArcFace template, batching, largest-face-first) is shared here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Face:
    """One detected face.

    bbox: float32 (4,) x1, y1, x2, y2 in pixels of the input image.
    kps: float32 (5, 2) in ArcFace order: left eye, right eye, nose, left mouth, right mouth
        ("left" = the image's left side, as in insightface).
    det_score: detector confidence (backend-specific scale; higher is more confident).
    embedding: float32 (D,) unit-norm, or None before embedding.
    backend: name of the analyser that produced it.
    """

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray | None = None
    backend: str = ""
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.bbox = np.asarray(self.bbox, dtype=np.float32).reshape(4)
        self.kps = np.asarray(self.kps, dtype=np.float32).reshape(5, 2)
        self.det_score = float(self.det_score)
        if self.embedding is not None:
            self.embedding = np.asarray(self.embedding, dtype=np.float32).reshape(-1)

    @property
    def area(self) -> float:
        w, h = self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]
        return float(max(w, 0.0) * max(h, 0.0))

    def with_embedding(self, embedding: np.ndarray) -> Face:
        return replace(self, embedding=np.asarray(embedding, dtype=np.float32))


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Detect, align and embed faces. Images are numpy RGB uint8 (H, W, 3).

    Every analyser declares what the rest of synthface needs to know about it, so nothing is ever
    inferred from its name: `same_person_cos` (the cosine above which two of its embeddings are
    the same person; the default filter threshold everywhere), `license` and `license_restricted`
    (whether its models exclude commercial use, or their licence is unknown; read from
    `synthface.weights` for downloadable models), and `embedding_space` (a name for the space its
    embeddings live in: two analysers with the same name produce comparable embeddings).
    """

    name: str
    license: str
    license_restricted: bool
    same_person_cos: float
    embedding_space: str
    embedding_dim: int

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image, largest first, without embeddings."""
        ...

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 RGB ArcFace-aligned crops -> (N, D) float32 unit-norm."""
        ...

    def analyze(self, images: Sequence[np.ndarray], *, all_faces: bool = False) -> list[list[Face]]:
        """Faces with embeddings per image; only the largest unless `all_faces`."""
        ...


#: What every analyser must declare, with the type each value must have (see FaceAnalyzer).
DECLARED = {"name": str, "license": str, "license_restricted": bool, "same_person_cos": float,
            "embedding_space": str, "embedding_dim": int}


def check_analyzer(analyzer) -> None:
    """Refuse, with one InvalidInputError naming every gap, an analyser that does not declare what
    FaceAnalyzer requires (a custom analyser written before these were required, say)."""
    from synthface.errors import InvalidInputError

    gaps = []
    for attr, kind in DECLARED.items():
        value = getattr(analyzer, attr, None)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and -1.0 <= value <= 1.0 if kind is float else isinstance(value, kind)
        if not ok:
            gaps.append(f"{attr} ({kind.__name__}{', a cosine' if kind is float else ''}; got {value!r})")
    if gaps:
        raise InvalidInputError(
            f"The face analyser {type(analyzer).__name__} does not declare {', '.join(gaps)}. synthface reads its "
            "same-person threshold, licence and embedding space from the analyser itself, never from its name; "
            "add these attributes to the class (see synthface.faces.FaceAnalyzer)."
        )


def largest_first(faces: list[Face]) -> list[Face]:
    """Sort by box area, largest first (ties: higher detection score first)."""
    return sorted(faces, key=lambda f: (-f.area, -f.det_score))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise unit norm, float32."""
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)).astype(np.float32)


class AnalyzerBase:
    """Shared `analyze`: detect, crop every kept face, embed all crops in one batch.

    Subclasses implement `detect` and `embed`; they may override `crops` when their recogniser
    prefers a crop taken straight from the full image (e.g. a larger chip than 112 x 112).
    """

    name: str = ""
    license: str = ""
    embedding_dim: int = 0

    def crops(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        from synthface.faces.align import norm_crop

        return np.stack([norm_crop(image, f.kps) for f in faces])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        return self.embed(crops)

    def embed_faces(self, images: list[np.ndarray], faces: list[list[Face]]) -> np.ndarray:
        """(F, D) embeddings of every face of every image, in order: crop each on the CPU, embed in
        one batch. A backend that aligns on its device overrides this."""
        return self.embed_crops(np.concatenate([self.crops(im, fs) for im, fs in zip(images, faces) if fs]))

    def analyze(self, images: Sequence[np.ndarray], *, all_faces: bool = False) -> list[list[Face]]:
        from synthface.faces.image import as_rgb_uint8

        images = [as_rgb_uint8(im) for im in _as_list(images)]
        detected = self.detect(images)
        kept = [faces if all_faces else faces[:1] for faces in detected]
        if not any(kept):
            return [[] for _ in images]
        emb = self.embed_faces(images, kept)
        out, i = [], 0
        for faces in kept:
            out.append([f.with_embedding(emb[i + k]) for k, f in enumerate(faces)])
            i += len(faces)
        return out


def _as_list(images) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]  # a single image given where a batch was expected
    return list(images)
