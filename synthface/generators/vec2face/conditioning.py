"""Vec2Face's conditioning recogniser: its own Glint360K IResNet-100 (`vec2face-arcface`), and the note
shown when Arc2Face's arcface.onnx stands in for it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VEC2FACE_NOTE = (
    "Vec2Face was trained on features of its own Glint360K ArcFace-R100 (vec2face-arcface), which is not "
    "installed; this demo conditions it on Arc2Face's arcface.onnx instead, an insightface recogniser of the "
    "same kind whose weights are not verified to be the same, so the likeness may be weaker than Vec2Face's "
    "own. To condition on Vec2Face's recogniser, run `synthface models download vec2face-arcface`."
)


class Vec2FaceConditioner:
    """Conditioning vectors from Vec2Face's own recogniser: the Glint360K IResNet-100 of the
    `vec2face-arcface` registry entry (a bare state dict in arcface_torch's names; any IResNet the
    keys describe loads, see `synthface.fr.backbones.backbone_from_state_dict`).

    Each face is aligned to 112 x 112 from its 5 landmarks (`norm_crop`, as for ArcFaceConditioner),
    fed as RGB in [-1, 1], and its raw output (the feature Vec2Face was trained on) is returned as a
    unit vector: the direction is the identity; the pipeline rescales it to its identity norm. Runs
    on the CPU (a few photos per request), in fp32.
    """

    name = "vec2face-arcface"
    note = ""

    def __init__(self, path: str | os.PathLike, *, allow_pickle: bool | None = None) -> None:
        from synthface.fr.backbones import backbone_from_state_dict
        from synthface.weights import read_pickled_state_dict

        self.path = Path(path)
        state = read_pickled_state_dict(self.path, model="vec2face-arcface", allow_pickle=allow_pickle,
                                        what="Vec2Face conditioning recogniser (vec2face-arcface)")
        self.model = backbone_from_state_dict(state, source=str(self.path)).float().requires_grad_(False)

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence) -> np.ndarray:
        import torch

        from synthface.faces import l2_normalize, norm_crop

        crops = np.stack([norm_crop(im, f.kps, 112) for im, f in zip(images, faces)])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.inference_mode():
            return l2_normalize(self.model(x).numpy())
