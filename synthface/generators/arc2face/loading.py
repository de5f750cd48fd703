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
from synthface.generators._checks import check_device, check_dtype
from synthface.generators.arc2face.pipeline import Arc2FacePipeline, default_scheduler
from synthface.weights import pickle_allowed, pickle_refusal, pickled_only

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
        from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline

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
