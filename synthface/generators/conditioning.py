"""What a family's ID vectors come from: its conditioning recogniser, found locally, as a conditioner.

A conditioner maps photos and their detected faces to unit ID vectors, `conditioner(images, faces)
-> (N, D) float32`. Each family declares its recognisers (`GeneratorFamily.recognisers`, registry
names, first choice first); `conditioner_for` builds the first one found locally. The ONNX ArcFace
conditioner here is the default for any insightface-style recogniser (`.onnx`); a family whose
recogniser is another kind builds its own (`GeneratorFamily.recogniser_conditioner`); an IResNet
state dict in arcface_torch's names (Vec2Face's Glint360K R100, IDiff-Face's ElasticFace-Arc R100) is
`IResNetConditioner`.
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


class IResNetConditioner:
    """Conditioning vectors from an IResNet recogniser stored as a (pickled) state dict in arcface_torch's
    names: any IResNet the keys describe loads (`synthface.fr.backbones.backbone_from_state_dict`).

    Each face is aligned to 112 x 112 from its 5 landmarks (`norm_crop`, as for ArcFaceConditioner),
    fed as RGB in [-1, 1] ((x / 255 - 0.5) / 0.5, arcface_torch's and ElasticFace's preprocessing), and
    its raw output is returned as a unit vector. Runs on the CPU (a few photos per request), in fp32.
    `name` is the registry entry (`synthface.weights`) the file belongs to; `note` what the user should
    know about it (a fallback, say).
    """

    def __init__(self, path, *, name: str, what: str, allow_pickle: bool | None = None, note: str = "") -> None:
        from synthface.fr.backbones import backbone_from_state_dict
        from synthface.weights import read_pickled_state_dict

        self.path, self.name, self.note = Path(path), name, note
        state = read_pickled_state_dict(self.path, model=name, allow_pickle=allow_pickle, what=what)
        self.model = backbone_from_state_dict(state, source=str(self.path)).float().requires_grad_(False)

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence) -> np.ndarray:
        import torch

        from synthface.faces import l2_normalize, norm_crop

        crops = np.stack([norm_crop(im, f.kps, 112) for im, f in zip(images, faces)])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.inference_mode():
            return l2_normalize(self.model(x).numpy())


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
