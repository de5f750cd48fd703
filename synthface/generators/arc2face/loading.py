"""Find and load Arc2Face: tiny test weights, a saved pipeline, the published layout, or the HF cache.

Lookup is local first: a folder on disk, else the Hugging Face cache (`local_files_only`), and a
download only with `allow_download=True`. The published Arc2Face repo ships its UNet under
`arc2face/` and its text encoder under `encoder/`; the VAE, tokenizer and scheduler config come from
Stable Diffusion 1.5. Pickled weights (`*.bin`) load only with an explicit opt-in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from synthface.errors import ModelNotFoundError
from synthface.pipelines.arc2face import Arc2FacePipeline, default_scheduler
from synthface.pipelines.checks import check_device, check_dtype
from synthface.weights import load_pickled, pickle_allowed, pickle_refusal, pickled_only

ARC2FACE_REPO = "FoivosPar/Arc2Face"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Short names a recipe or the CLI may use for a Hugging Face repo.
ALIASES = {"arc2face": ARC2FACE_REPO}

# Fetched (not necessarily loaded): the published encoder exists only as pytorch_model.bin.
_PUBLISHED_FILES = ["arc2face/*", "encoder/*"]
_SAVED_FILES = ["*.json", "*/*.json", "*/*.safetensors", "tokenizer/*"]
_BASE_FILES = ["model_index.json", "vae/*.json", "vae/*.safetensors", "tokenizer/*", "scheduler/*"]


def load_arc2face(
    model: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    base: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool | None = None,
) -> Arc2FacePipeline:
    """Load an `Arc2FacePipeline` on `device` in `dtype`.

    Args:
        model: "tiny" (random test weights), a folder written by `save_pretrained`, a folder in
            the published layout (`arc2face/` + `encoder/`, with or without the SD 1.5 base parts
            beside them), "arc2face" / "FoivosPar/Arc2Face", or any Hugging Face repo id in one of
            those layouts, found in the local cache.
        base: where the SD 1.5 VAE, tokenizer and scheduler come from for the published layout
            (a folder or a repo id); default: `model` itself when it holds them, else SD 1.5 from
            the cache.
        allow_download: fetch missing files from the Hub; otherwise only local files are used.
        cache_dir: Hugging Face cache folder (default: the standard one).
        allow_pickle: also load `pytorch_model.bin`-style pickled weights (as the published
            encoder ships). SYNTHFACE_ALLOW_PICKLE=1 in the environment opts in as well, whatever
            this argument says (see `synthface.weights.pickle_allowed`).

    Raises:
        ModelNotFoundError: the weights are not available locally (or not in a safe format); the
            message says what to download and from where.
    """
    dtype, device = check_dtype(dtype), check_device(device)  # refused before anything is read
    allow_pickle = pickle_allowed(allow_pickle)
    opts = dict(dtype=dtype, allow_download=allow_download, cache_dir=cache_dir, allow_pickle=allow_pickle)
    name = str(model)
    if name == "tiny":
        from synthface.pipelines.testing import tiny_arc2face_pipeline

        pipe = tiny_arc2face_pipeline()
    elif Path(name).expanduser().exists():
        pipe = _load_folder(Path(name).expanduser(), base, **opts)
    elif _looks_like_repo_id(ALIASES.get(name.lower(), name)):
        repo = ALIASES.get(name.lower(), name)
        folder = _snapshot(repo, _PUBLISHED_FILES + _SAVED_FILES,
                           allow_download=allow_download, cache_dir=cache_dir, allow_pickle=allow_pickle)
        pipe = _load_folder(folder, base, **opts)
    else:
        raise ModelNotFoundError(
            f"{name!r} is neither 'tiny', an existing folder, nor a Hugging Face repo id (owner/name). "
            f"Pass a folder saved by Arc2FacePipeline.save_pretrained, a folder with the published "
            f"Arc2Face layout (arc2face/ and encoder/), or 'arc2face' for {ARC2FACE_REPO}."
        )
    if pipe.dtype == dtype:  # skip the cast (and diffusers' warning about casting with `to()`)
        return pipe.to(device=device)
    return pipe.to(device=device, dtype=dtype)


def _load_folder(path: Path, base, *, dtype, allow_download, cache_dir, allow_pickle) -> Arc2FacePipeline:
    index = path / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == Arc2FacePipeline.__name__:
        return Arc2FacePipeline.from_pretrained(path, dtype=dtype, allow_pickle=allow_pickle)
    if (path / "arc2face").is_dir() and (path / "encoder").is_dir():
        return _load_published(path, base, dtype=dtype, allow_download=allow_download, cache_dir=cache_dir,
                               allow_pickle=allow_pickle)
    raise ModelNotFoundError(
        f"{path} holds no Arc2Face model: expected either a model_index.json naming Arc2FacePipeline "
        "(a folder written by save_pretrained) or the published layout with subfolders arc2face/ "
        f"(UNet) and encoder/ (text encoder), as in {ARC2FACE_REPO} on Hugging Face."
    )


def _load_published(path: Path, base, *, dtype, allow_download, cache_dir, allow_pickle) -> Arc2FacePipeline:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base_dir = _resolve_base(path, base, allow_download=allow_download, cache_dir=cache_dir, allow_pickle=allow_pickle)
    safe = not allow_pickle or None  # None: safetensors when present, else pickle
    _check_weights(path / "arc2face", allow_pickle, what=f"Arc2Face UNet ({ARC2FACE_REPO}, arc2face/)")
    _check_weights(path / "encoder", allow_pickle, what=f"Arc2Face text encoder ({ARC2FACE_REPO}, encoder/)")
    _check_weights(base_dir / "vae", allow_pickle, what=f"SD 1.5 VAE ({SD15_REPO}, vae/)")
    unet = UNet2DConditionModel.from_pretrained(path / "arc2face", dtype=dtype, use_safetensors=safe)
    text_encoder = CLIPTextModel.from_pretrained(path / "encoder", dtype=dtype, use_safetensors=safe)
    vae = AutoencoderKL.from_pretrained(base_dir / "vae", dtype=dtype, use_safetensors=safe)
    tokenizer = CLIPTokenizer.from_pretrained(base_dir / "tokenizer")
    scheduler_config = json.loads((base_dir / "scheduler" / "scheduler_config.json").read_text())
    return Arc2FacePipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
                            scheduler=default_scheduler(scheduler_config))


def _resolve_base(path: Path, base, *, allow_download, cache_dir, allow_pickle) -> Path:
    parts = ("vae", "tokenizer", "scheduler")
    if base is None and all((path / p).is_dir() for p in parts):
        return path
    base = SD15_REPO if base is None else base
    folder = Path(str(base)).expanduser()
    if not folder.exists():
        if not _looks_like_repo_id(str(base)):
            raise ModelNotFoundError(f"The Stable Diffusion 1.5 base {base!r} is neither a folder nor a repo id.")
        folder = _snapshot(str(base), _BASE_FILES, allow_download=allow_download, cache_dir=cache_dir,
                           allow_pickle=allow_pickle)
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"The Stable Diffusion 1.5 base {folder} lacks {', '.join(p + '/' for p in missing)}. Arc2Face takes "
            f"its VAE, tokenizer and scheduler config from {SD15_REPO}: "
            "`synthface models download sd15`, "
            "or pass base= a folder holding vae/, tokenizer/ and scheduler/."
        )
    return folder


def _check_weights(folder: Path, allow_pickle: bool, *, what: str) -> None:
    if not folder.is_dir():
        raise ModelNotFoundError(f"The {what} folder {folder} is missing.")
    if any(folder.glob("*.safetensors")):
        return
    pickled = pickled_only(folder)
    if pickled and not allow_pickle:
        raise pickle_refusal(what, pickled)
    if not pickled:
        raise ModelNotFoundError(f"The {what} folder {folder} holds no weights (*.safetensors or *.bin).")


def _snapshot(repo: str, patterns: list[str], *, allow_download, cache_dir, allow_pickle) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    if allow_pickle:
        patterns = patterns + [p.replace("*.safetensors", "*.bin") for p in patterns if p.endswith("*.safetensors")]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=not allow_download,
                                      cache_dir=str(cache_dir) if cache_dir else None))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as exc:
        how = (
            "Downloads are off (the default): fetch Arc2Face once with `synthface models download arc2face` and "
            "`synthface models download sd15` (or pass allow_download=True / --allow-download), or pass a local folder."
            if not allow_download
            else "The download failed; check the network, the repo id and your Hugging Face login (gated repos)."
        )
        raise ModelNotFoundError(
            f"{repo} is not in the local Hugging Face cache{f' ({cache_dir})' if cache_dir else ''}. {how} "
            f"Arc2Face needs {ARC2FACE_REPO} (arc2face/ and encoder/) and the SD 1.5 base {SD15_REPO} "
            f"(vae/, tokenizer/, scheduler/). The weights are for non-commercial research only. ({type(exc).__name__})"
        ) from None


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


# ---------------------------------------------------------------------------------------- Vec2Face

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
    from synthface.pipelines.vec2face import Vec2FacePipeline

    dtype, device = check_dtype(dtype), check_device(device)  # refused before anything is read
    name = str(model)
    if name in VEC2FACE_TINY:
        from synthface.pipelines.testing import tiny_vec2face_pipeline

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

    The unused entries (`synthface.pipelines.vec2face_model.UNUSED_KEYS`) are dropped by name;
    LoRA is detected from `.attn.qkv.A` keys; every other entry must match the published
    architecture exactly (loaded with `strict=True`).
    """
    import argparse

    from synthface.errors import FileFormatError
    from synthface.pipelines.vec2face_model import UNUSED_KEYS, PoseConditionModel, Vec2FaceModel

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
    """`cls(**config)` with `state` loaded strictly; a FileFormatError naming every mismatched key."""
    from synthface.errors import FileFormatError
    from synthface.weights import state_dict_mismatch

    with torch.device("meta"):
        module = cls(**config)
    detail = state_dict_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if detail:
        raise FileFormatError(
            f"{source} does not match the published {cls.__name__} ({detail}). It is another model or another "
            "size; pass the published Vec2Face / Vec2Face+ files, or a folder converted from them."
        )
    module.load_state_dict(state, strict=True, assign=True)
    return module


def _load_converted_vec2face(folder: Path):
    """Components of a folder written by `Vec2FacePipeline.save_pretrained` (safetensors only)."""
    from safetensors.torch import load_file

    from synthface.errors import FileFormatError
    from synthface.pipelines.vec2face_model import PoseConditionModel, Vec2FaceModel

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
