"""Find and load Vec2Face / Vec2Face+: tiny random models, the published `.pth` files (through
`synthface.weights`), their Hugging Face folders, or a converted safetensors folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from synthface.errors import ModelNotFoundError
from synthface.generators._checks import check_device, check_dtype
from synthface.weights import load_pickled

#: Model names `load_vec2face` accepts, with the registry entry (synthface.weights) holding the file.
VEC2FACE_MODELS = {"vec2face": "vec2face", "vec2face-plus": "vec2face-plus", "vec2face-plus-pose": "vec2face-plus-pose"}
#: Random test models: the same classes and code path, small.
VEC2FACE_TINY = ("vec2face-tiny", "vec2face-plus-tiny")
#: Where the published Hugging Face repos keep the generator, relative to a snapshot folder.
VEC2FACE_LAYOUT = {"vec2face": "weights/vec2face_generator.pth", "vec2face-plus": "vec2face_plus/main_model.pth",
                   "vec2face-plus-pose": "vec2face_plus/pose_model.pth"}
#: Vec2Face+'s LoRA alpha (rank 8, scaling 4), used unless the checkpoint's saved arguments say otherwise.
VEC2FACE_PLUS_LORA_ALPHA = 32.0


def load_vec2face(
    model: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_download: bool = False,
    allow_pickle: bool | None = None,
    pose: bool = False,
    merge_lora: bool = False,
):
    """Load a `Vec2FacePipeline` on `device` in `dtype`.

    Args:
        model: "vec2face-tiny" / "vec2face-plus-tiny" (random, small, same code path: tests and
            smoke runs); "vec2face", "vec2face-plus" or "vec2face-plus-pose" (the published files,
            found through `synthface.weights`, i.e. the Hugging Face cache); a published `.pth`
            (`{'model_vec2face': state_dict, ...}`, read with torch's weights_only loader; a
            `pose_model` entry becomes the pose model); a folder in the Hugging Face layout
            (`weights/vec2face_generator.pth`, or `vec2face_plus/main_model.pth` and, with
            `pose=True`, `vec2face_plus/pose_model.pth`); or a converted safetensors folder (written
            by `Vec2FacePipeline.save_pretrained` or `synthface models convert`).
        device, dtype: where and in what precision the modules live.
        allow_download: fetch a published model that is not in the cache.
        allow_pickle: read the published `.pth` files (pickles, read with `weights_only=True`;
            Vec2Face+'s saved `argparse.Namespace` is the one class allowed besides tensors).
            SYNTHFACE_ALLOW_PICKLE=1 opts in as well. Converted folders need no opt-in.
        pose: in a Vec2Face+ Hugging Face folder, read `pose_model.pth` (LoRA + pose model).
        merge_lora: fold Vec2Face+'s LoRA adapters into the attention weights (one GEMM each).

    Raises:
        ModelNotFoundError: the model is not available locally, or is pickled without an opt-in.
        FileFormatError: the file is truncated, damaged or not a Vec2Face checkpoint, or its
            entries do not match the published architecture (the message names the keys).
    """
    from synthface import weights
    from synthface.generators.vec2face.pipeline import Vec2FacePipeline

    dtype, device = check_dtype(dtype), check_device(device)  # refused before anything is read
    name = str(model)
    if name in VEC2FACE_TINY:
        from synthface.generators.vec2face.tiny import tiny_vec2face_pipeline

        pipe = tiny_vec2face_pipeline(plus=name == "vec2face-plus-tiny", dtype=dtype)
    else:
        if name in VEC2FACE_MODELS:
            path = weights.find(VEC2FACE_MODELS[name], allow_download=allow_download)
        else:
            path = Path(name).expanduser()
            if not path.exists():
                raise ModelNotFoundError(
                    f"{name!r} is neither a Vec2Face model name ({', '.join([*VEC2FACE_MODELS, *VEC2FACE_TINY])}) "
                    "nor an existing file or folder. Fetch the weights with `synthface models download vec2face` "
                    "and pass the name, the .pth file, or its folder."
                )
        if path.is_dir() and (path / "model_index.json").is_file():
            vec2face, pose_model = _load_converted_vec2face(path)
        else:
            if path.is_dir():
                path = _published_file(path, pose)
            vec2face, pose_model = read_vec2face_checkpoint(path, allow_pickle=weights.pickle_allowed(allow_pickle))
        pipe = Vec2FacePipeline(vec2face=vec2face.eval(), pose_model=pose_model.eval() if pose_model else None)
    if merge_lora:
        pipe.vec2face.merge_lora()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device) if pipe.dtype == dtype else pipe.to(device=device, dtype=dtype)


def _published_file(folder: Path, pose: bool) -> Path:
    names = ["vec2face-plus-pose"] if pose else ["vec2face", "vec2face-plus"]
    for name in names:
        if (folder / VEC2FACE_LAYOUT[name]).is_file():
            return folder / VEC2FACE_LAYOUT[name]
    expected = " or ".join(VEC2FACE_LAYOUT[n] for n in names)
    raise ModelNotFoundError(
        f"{folder} holds no Vec2Face generator: expected {expected} (the Hugging Face layout of BooBooWu/Vec2Face "
        "and BooBooWu/Vec2Face_plus) or a model_index.json (a converted folder). Fetch it with "
        f"`synthface models download {names[0]}`."
    )


def read_vec2face_checkpoint(path: Path, *, allow_pickle: bool):
    """(generator, pose model or None) from a published `.pth` (or a bare generator state dict).

    The unused entries (`synthface.generators.vec2face.model.UNUSED_KEYS`) are dropped by name;
    LoRA is detected from `.attn.qkv.A` keys; every other entry must match the published
    architecture exactly (loaded with `strict=True`).
    """
    import argparse

    from synthface.errors import FileFormatError
    from synthface.generators.vec2face.model import UNUSED_KEYS, PoseConditionModel, Vec2FaceModel

    content = load_pickled(path, model="vec2face", what="Vec2Face checkpoint", allow_pickle=allow_pickle,
                           safe_globals=(argparse.Namespace,))
    if isinstance(content, dict) and "model_vec2face" in content:
        state, pose_state = dict(content["model_vec2face"]), content.get("pose_model")
    elif isinstance(content, dict) and "latent_prior_proj_f.weight" in content:
        state, pose_state = dict(content), None
    else:
        found = ", ".join(map(str, list(content)[:5])) if isinstance(content, dict) else type(content).__name__
        raise FileFormatError(
            f"{path} is not a Vec2Face checkpoint: it holds {found or 'nothing'}, not a 'model_vec2face' state dict "
            "(an Arc2Face or recogniser file?). Pass BooBooWu/Vec2Face's weights/vec2face_generator.pth or "
            "BooBooWu/Vec2Face_plus's vec2face_plus/main_model.pth or pose_model.pth."
        )
    for key in UNUSED_KEYS:
        state.pop(key, None)
    lora = state.get("blocks.0.attn.qkv.A")
    alpha = getattr(content.get("args"), "lora_alpha", VEC2FACE_PLUS_LORA_ALPHA)
    vec2face = _strict_load(Vec2FaceModel, {"lora_rank": int(lora.shape[0]) if lora is not None else 0,
                                            "lora_alpha": float(alpha)}, state, f"{path} (model_vec2face)")
    pose_model = None
    if pose_state is not None:
        pose_model = _strict_load(PoseConditionModel, {}, dict(pose_state), f"{path} (pose_model)")
    return vec2face, pose_model


def _strict_load(cls, config: dict, state: dict, source: str):
    """`cls(**config)` with `state` loaded strictly (`synthface.weights.strict_module`); every mismatched key named."""
    from synthface.weights import strict_module

    return strict_module(cls, config, state, lambda detail: (
        f"{source} does not match the published {cls.__name__} ({detail}). It is another model or another "
        "size; pass the published Vec2Face / Vec2Face+ files, or a folder converted from them."))


def _load_converted_vec2face(folder: Path):
    """Components of a folder written by `Vec2FacePipeline.save_pretrained` (safetensors only)."""
    from safetensors.torch import load_file

    from synthface.errors import FileFormatError
    from synthface.generators.vec2face.model import PoseConditionModel, Vec2FaceModel

    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "Vec2FacePipeline":
        raise ModelNotFoundError(
            f"{folder}/model_index.json names {index.get('_class_name')!r}, not Vec2FacePipeline. Pass a folder "
            "written by Vec2FacePipeline.save_pretrained or `synthface models convert`."
        )
    parts = {}
    for name, cls in (("vec2face", Vec2FaceModel), ("pose_model", PoseConditionModel)):
        entry = index.get(name)
        if name == "pose_model" and (entry is None or entry[0] is None):
            parts[name] = None
            continue
        weights_file, config_file = folder / name / "diffusion_pytorch_model.safetensors", folder / name / "config.json"
        if not (weights_file.is_file() and config_file.is_file()):
            raise ModelNotFoundError(f"{folder / name} lacks config.json or diffusion_pytorch_model.safetensors.")
        config = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
        try:
            state = load_file(str(weights_file))
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise FileFormatError(f"{weights_file} is damaged or truncated ({exc}); convert it again.") from None
        parts[name] = _strict_load(cls, config, state, str(weights_file))
    return parts["vec2face"], parts["pose_model"]


def refuse_shared_storage(pipe, model: str) -> None:
    """A FileFormatError naming the weights that share memory (one tensor stored under several names, or
    views of one buffer): safetensors stores each tensor once, by name, and cannot write them."""
    from synthface.errors import FileFormatError

    for part in ("vec2face", "pose_model"):
        module = getattr(pipe, part, None)
        if module is None:
            continue
        owners: dict[int, list[str]] = {}
        for name, tensor in module.state_dict().items():
            storage = tensor.untyped_storage()
            if storage.nbytes():
                owners.setdefault(storage.data_ptr(), []).append(name)
        shared = [names for names in owners.values() if len(names) > 1]
        if shared:
            groups = "; ".join(" = ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
                               for names in shared[:3])
            raise FileFormatError(
                f"{model}: {len(shared)} group(s) of {part} weights share memory ({groups}{' ...' if len(shared) > 3 else ''}): "
                "one tensor is stored under several names, which safetensors cannot write and no published Vec2Face "
                "file holds. Save a copy whose entries are separate tensors (torch.save({k: v.clone() for k, v in "
                "state.items()}, path)) and convert that, or convert the published file."
            )
