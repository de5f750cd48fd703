"""Recognisers for every benchmark protocol: a model that maps aligned uint8 RGB crops to raw embeddings,
loaded from a `synthface train` run folder, a backbone state dict or an ONNX file (refused when its
weights hold NaN or infinity, which would score every pair as "different").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, ModelNotFoundError


@dataclass
class Recognizer:
    """Something that maps aligned uint8 RGB crops (N, S, S, 3) to raw (un-normalised) embeddings (N, D)."""

    forward: Callable[[np.ndarray], np.ndarray]
    input_size: int
    description: str


def torch_recognizer(model, *, device=None, batch_size: int = 256, description: str = "IResNet") -> Recognizer:
    """Wrap a backbone taking (x / 255 - 0.5) / 0.5 NCHW float input; runs in eval mode, float32."""
    import torch

    from synthface.devices import resolve_device

    dev = resolve_device(device)
    model = model.to(dev).eval()

    def forward(crops: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[i : i + batch_size])).to(dev)
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
                out.append(model(x).float().cpu().numpy())
        return np.concatenate(out)

    return Recognizer(forward, model.config.input_size, description)


def load_recognizer(source: str | Path, *, device=None, batch_size: int = 256) -> Recognizer:
    """A `synthface train` run folder (its model.pt), a backbone state dict `.pt`/`.pth` (architecture read
    from its keys; loaded with weights_only, no pickle opt-in needed), or an ONNX recogniser."""
    source = Path(source)
    if source.is_dir():
        if not (source / "model.pt").is_file():
            raise ModelNotFoundError(
                f"{source} is a folder without model.pt. Pass a `synthface train` run folder (model.pt is written "
                "after the first epoch), a backbone .pt file or an ONNX recogniser."
            )
        source = source / "model.pt"
    if not source.is_file():
        raise ModelNotFoundError(f"{source} does not exist. Pass a `synthface train` run folder, a backbone .pt file or an ONNX recogniser.")
    if source.stat().st_size == 0:
        raise FileFormatError(
            f"{source} is empty (0 bytes): the copy or download was cut off, or the run was killed while writing it. "
            "Copy it again, or pass another model (a `synthface train` run folder, a backbone .pt or an ONNX recogniser)."
        )
    if source.suffix.lower() == ".onnx":
        return _onnx_recognizer(source, device)
    return torch_recognizer(load_backbone(source), device=device, batch_size=batch_size, description=str(source))


def load_backbone(path: str | Path):
    """The IResNet in a state-dict file, architecture inferred from its keys (see backbones.config_from_state_dict)."""
    import torch

    from synthface.fr.backbones import backbone_from_state_dict

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileFormatError(
            f"{path} cannot be read as a torch state dict ({str(exc).splitlines()[0][:200]}). Pass a plain backbone "
            "state dict (what `synthface train` writes as model.pt, or arcface_torch's model.pt) or an ONNX recogniser."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileFormatError(
            f"{path} holds a {type(state).__name__} that is not a plain backbone state dict (for a training checkpoint, "
            "pass the run folder or its model.pt instead)."
        )
    check_finite({k: v for k, v in state.items() if v.is_floating_point()}, str(path))
    return backbone_from_state_dict(state, source=str(path))


def check_finite(tensors: dict, source: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged training run, a damaged file): they embed every
    image as NaN, and every pair would silently count as "different". `tensors`: name -> tensor or array."""
    bad = [name for name, t in tensors.items() if not bool(np.isfinite(np.asarray(t)).all())]
    if bad:
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise FileFormatError(
            f"{source} holds non-finite weights (NaN or infinity) in {names}: the training run diverged or the file is "
            "damaged, and every embedding would be NaN. Evaluate an earlier checkpoint, or train again with a lower "
            "learning rate."
        )


def _onnx_recognizer(path: Path, device) -> Recognizer:
    """onnxruntime on the CPU; on a CUDA device the graph runs as torch ops (no onnxruntime-gpu needed)."""
    from synthface.devices import resolve_device
    from synthface.faces.onnx_backend import ArcFaceRecognizer
    from synthface.faces.onnx_torch import float_initializers, read_onnx

    check_finite(dict(float_initializers(read_onnx(path, "Recogniser"))), str(path))
    dev = resolve_device(device)
    rec = ArcFaceRecognizer(path, runtime="torch", device=dev) if dev.type == "cuda" else ArcFaceRecognizer(path)
    step = 1 if rec.fixed_batch == 1 else rec.batch_size

    def forward(crops: np.ndarray) -> np.ndarray:
        # the raw outputs (ArcFaceRecognizer.__call__ normalises), so the flip sum is insightface's
        return np.concatenate([rec._run(crops[i : i + step]) for i in range(0, len(crops), step)]).astype(np.float32)

    return Recognizer(forward, rec.input_size, str(path))
