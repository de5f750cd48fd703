"""Vec2Face's conditioning recogniser: its own Glint360K IResNet-100 (`vec2face-arcface`), and the note
shown when Arc2Face's arcface.onnx stands in for it."""

from __future__ import annotations

import os

from synthface.generators.conditioning import IResNetConditioner

VEC2FACE_NOTE = (
    "Vec2Face was trained on features of its own Glint360K ArcFace-R100 (vec2face-arcface), which is not "
    "installed; this demo conditions it on Arc2Face's arcface.onnx instead, an insightface recogniser of the "
    "same kind whose weights are not verified to be the same, so the likeness may be weaker than Vec2Face's "
    "own. To condition on Vec2Face's recogniser, run `synthface models download vec2face-arcface`."
)


class Vec2FaceConditioner(IResNetConditioner):
    """Conditioning vectors from Vec2Face's own recogniser: the Glint360K IResNet-100 of the
    `vec2face-arcface` registry entry (`IResNetConditioner`). The raw output's direction is the
    identity (the feature Vec2Face was trained on); the pipeline rescales it to its identity norm."""

    def __init__(self, path: str | os.PathLike, *, allow_pickle: bool | None = None) -> None:
        super().__init__(path, name="vec2face-arcface", allow_pickle=allow_pickle,
                         what="Vec2Face conditioning recogniser (vec2face-arcface)")
