"""The identity-customisation demo: photos of one person (or a random identity) in, new images of
that identity out, each captioned with its measured cosine to the identity and a keep/drop verdict.

This module is the plain logic (`DemoSession`: identity from photos, rendering through
`synthface.render`, judging, the zip); `synthface.demo_page` is the thin Gradio page over it.
Any generator `synthface.render` knows can be chosen (Arc2Face, Vec2Face, their random-weight
test models).

Two embedding spaces meet here. The generator is conditioned on an ArcFace vector from the
recogniser it was trained on (the conditioning recogniser: Arc2Face's own `arcface.onnx`; for
Vec2Face its own Glint360K IResNet-100, `vec2face-arcface`); images are judged by the analyser
(dlib offline, or insightface). A real Vec2Face model falls back to `arcface.onnx`, with a note on
the page, only when `vec2face-arcface` is not installed. When `arcface.onnx` is not installed, a
random-weight test model is conditioned on a *stand-in* (the analyser's descriptor through a fixed
random orthogonal projection to 512-d): it exercises the plumbing only and carries no identity. A
real model refuses the stand-in.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from synthface.errors import ImageError, InvalidInputError, ModelNotFoundError, NoFaceError

#: Largest upload accepted (enforced by the server on upload and again before reading).
MAX_UPLOAD_MB = 15
#: Largest photo accepted, in pixels (checked from the header, before decoding).
MAX_PHOTO_PIXELS = 40_000_000
#: Photos are downscaled to this longest side before face detection (speed; faces stay large).
ANALYSIS_SIDE = 1600
MAX_PHOTOS = 10
MAX_IMAGES = 8
CONDITIONING_DIM = 512
#: Seed of the stand-in projection; fixed so a photo always maps to the same stand-in vector.
STANDIN_SEED = 7_2024
#: Generated images and zips older than this are removed from the demo's temporary folder (which
#: is removed whole when the demo stops).
KEEP_OUTPUTS_S = 3600
STANDIN_NOTE = (
    "Stand-in identity vector (plumbing only): Arc2Face's ArcFace recogniser (arcface.onnx) is not "
    "installed, so the photo's {analyzer} descriptor is mapped to 512-d by a fixed random orthogonal "
    "projection. A random-weight test model accepts any 512-d vector; to draw the same person with a real "
    "{family} model, run `synthface models download {recogniser}`."
)

STANDIN_SHORT = "Stand-in identity vector (plumbing only; see the note at the top of the page)."
VEC2FACE_NOTE = (
    "Vec2Face was trained on features of its own Glint360K ArcFace-R100 (vec2face-arcface), which is not "
    "installed; this demo conditions it on Arc2Face's arcface.onnx instead, an insightface recogniser of the "
    "same kind whose weights are not verified to be the same, so the likeness may be weaker than Vec2Face's "
    "own. To condition on Vec2Face's recogniser, run `synthface models download vec2face-arcface`."
)
CONDITIONER_SHORT = "Conditioning recogniser: see the note at the top of the page."


def is_random_model(model: str) -> bool:
    """Whether `model` is a built-in random-weight test model (plumbing only; draws no faces)."""
    from synthface.weights import BUILT_IN_LICENCES

    return model in BUILT_IN_LICENCES

# ------------------------------------------------------------------------------------ conditioning


class ArcFaceConditioner:
    """Conditioning vectors from Arc2Face's ArcFace recogniser, on crops aligned from `face.kps`."""

    name = "arcface"

    def __init__(self, recognizer, note: str = "") -> None:
        self.recognizer, self.note = recognizer, note

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence) -> np.ndarray:
        from synthface.faces import norm_crop

        size = self.recognizer.input_size
        return self.recognizer(np.stack([norm_crop(im, f.kps, size) for im, f in zip(images, faces)]))


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


class StandInConditioner:
    """Plumbing-only conditioning: analyser descriptor -> fixed orthogonal projection -> unit 512-d."""

    name = "stand-in"

    def __init__(self, in_dim: int, analyzer_name: str, dim: int = CONDITIONING_DIM, seed: int = STANDIN_SEED,
                 *, model: str = "tiny") -> None:
        self.projection = standin_projection(in_dim, dim, seed)
        family, recogniser = ("Vec2Face", "vec2face-arcface") if _vec2face_family(model) else ("Arc2Face", "arc2face-arcface")
        self.note = STANDIN_NOTE.format(analyzer=analyzer_name, family=family, recogniser=recogniser)

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence) -> np.ndarray:
        from synthface.faces import l2_normalize

        return l2_normalize(np.stack([f.embedding for f in faces]) @ self.projection.T)


def standin_projection(in_dim: int, dim: int = CONDITIONING_DIM, seed: int = STANDIN_SEED) -> np.ndarray:
    """(dim, in_dim) matrix with orthonormal columns (so it preserves cosines), fixed by `seed`."""
    if in_dim > dim:
        raise InvalidInputError(f"cannot project {in_dim}-d descriptors into {dim}-d orthogonally.")
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, in_dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: unique for a given seed


def make_conditioner(kind: str, model: str, analyzer, *, allow_pickle: bool | None = None):
    """"arcface" (the generator's conditioning recogniser, found locally), "stand-in", or "auto":
    arcface when installed, else the stand-in for a random-weight test model; a real model without
    its recogniser is an error.

    For a real Vec2Face model, the recogniser is Vec2Face's own (`Vec2FaceConditioner` over
    `vec2face-arcface`, a pickle: needs `allow_pickle` or SYNTHFACE_ALLOW_PICKLE=1); only when that
    is not installed, Arc2Face's arcface.onnx, carrying `VEC2FACE_NOTE` (shown on the page). Random
    test models and Arc2Face use arcface.onnx.
    """
    if kind not in ("auto", "arcface", "stand-in"):
        raise InvalidInputError(f"conditioner must be 'auto', 'arcface' or 'stand-in', got {kind!r}.")
    if kind == "stand-in":
        return StandInConditioner(analyzer.embedding_dim, analyzer.name, model=model)
    from synthface import weights

    vec2face = _vec2face_family(model) and not is_random_model(model)
    if vec2face:
        try:
            own = weights.find("vec2face-arcface")
        except ModelNotFoundError:
            own = None  # not installed: arcface.onnx, with the note
        if own is not None:
            return Vec2FaceConditioner(own, allow_pickle=allow_pickle)
    try:
        path = weights.find("arc2face-arcface")
    except ModelNotFoundError as exc:
        if kind == "auto" and is_random_model(model):
            return StandInConditioner(analyzer.embedding_dim, analyzer.name, model=model)
        needs = ("Vec2Face's own recogniser (vec2face-arcface) or, failing that, Arc2Face's (arc2face-arcface); "
                 "neither is installed. Run `synthface models download vec2face-arcface`.") if vec2face else \
            "Arc2Face's own recogniser, which is not installed."
        raise ModelNotFoundError(f"The {model} model is conditioned on ArcFace vectors from {needs} {exc}") from None
    note = VEC2FACE_NOTE if vec2face else ""
    rec = getattr(analyzer, "recognizer", None)
    if rec is not None and Path(getattr(rec, "path", "")) == Path(path):
        return ArcFaceConditioner(rec, note)  # the analyser already runs that recogniser: share it
    from synthface.faces.onnx_backend import ArcFaceRecognizer

    return ArcFaceConditioner(ArcFaceRecognizer(path), note)


def _vec2face_family(model: str) -> bool:
    """Whether `model` is rendered by Vec2Face's family, whose ID vectors come from its own recogniser."""
    from synthface.render import Vec2FaceFamily, family_for

    return isinstance(family_for(model), Vec2FaceFamily)


# ----------------------------------------------------------------------------------------- identity


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
    same_space = isinstance(conditioner, ArcFaceConditioner) and conditioner.recognizer is getattr(analyzer, "recognizer", None)
    return Identity(vector=vector, reference=vector if same_space else None, source={"kind": "random", "seed": int(seed)})


# ---------------------------------------------------------------------------------------- rendering


@dataclass
class Settings:
    """Generation controls, as on the page."""

    num_images: int = 4
    steps: int = 25
    guidance: float = 3.0
    seed: int = 0
    variation: float = 1.0
    lcm: bool = False

    def check(self) -> None:
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise InvalidInputError(f"Number of images must be 1 to {MAX_IMAGES}, got {self.num_images}.")
        if not 1 <= self.steps <= 100:
            raise InvalidInputError(f"Steps must be 1 to 100, got {self.steps}.")
        if not 0 <= self.guidance <= 20:
            raise InvalidInputError(f"Guidance must be 0 to 20, got {self.guidance}.")
        if not 0 <= self.seed < 2**32:
            raise InvalidInputError(f"Seed must be 0 to 2**32 - 1, got {self.seed}.")
        if not 0 <= self.variation <= 1:
            raise InvalidInputError(f"Variation (cosine to the identity) must be 0 to 1, got {self.variation}.")

    def image_seeds(self) -> list[int]:
        """One seed per image, derived from the seed, so image k is the same whatever the count."""
        return [(self.seed + k) % 2**32 for k in range(self.num_images)]


@dataclass
class Rendered:
    """One generated image and how the analyser judged it."""

    index: int  # 1-based position in the request
    image: np.ndarray
    seed: int
    condition_cos: float
    cos: float | None
    verdict: str  # "keep", "drop", "no face", or "unjudged" (nothing to compare with)

    @property
    def caption(self) -> str:
        if self.verdict == "no face":
            measured = "no face found"
        elif self.cos is None:
            measured = "ID cos n/a (no reference)"
        else:
            measured = f"ID cos {self.cos:.2f} → {self.verdict}"
        return f"{measured} · #{self.index} seed {self.seed} · condition cos {self.condition_cos:.2f}"


def judge(images: Sequence[np.ndarray], reference: np.ndarray | None, analyzer) -> list[tuple[float | None, str]]:
    """(cosine, verdict) per image: largest face vs `reference`, or vs the faces' robust centre."""
    from synthface.faces import l2_normalize

    threshold = analyzer.same_person_cos
    found = analyzer.analyze(list(images))
    with_face = [i for i, faces in enumerate(found) if faces]
    out: list[tuple[float | None, str]] = [(None, "no face")] * len(images)
    if not with_face:
        return out
    emb = l2_normalize(np.stack([found[i][0].embedding for i in with_face]))
    if reference is None:
        if len(with_face) < 2:
            return [(None, "unjudged") if i in with_face else o for i, o in enumerate(out)]
        from synthface.filtering import robust_centres

        ones = np.ones(len(with_face), dtype=bool)
        reference = robust_centres(emb, np.zeros(len(with_face), dtype=np.int64), ones, 1)[0]
    cos = emb @ np.asarray(reference, dtype=np.float32)
    for i, c in zip(with_face, cos):
        out[i] = (float(c), "keep" if c >= threshold else "drop")
    return out


class DemoSession:
    """Everything the page needs, loaded lazily and kept: analyser, conditioner, one renderer.

    model: any name or local path `synthface.render.build_renderer` takes ("arc2face", "vec2face",
    "tiny" / "vec2face-tiny" for tests, ...); the last model used stays loaded, in fp16 on CUDA and
    fp32 elsewhere. analyzer: a backend name for `get_analyzer` or an analyser instance.
    analyzer_options: keyword arguments for a named analyser, as a recipe's
    `filtering.analyzer_options` (e.g. {"runtime": "torch", "device": "cuda"} for insightface on the
    device); they override the demo's defaults, and an option the analyser does not take is an
    InvalidInputError naming the ones it does (when the analyser is built: `analyzer`).
    allow_pickle: read pickled weights (Vec2Face's `.pth` files: the generator and its recogniser);
    SYNTHFACE_ALLOW_PICKLE=1 opts in as well.

    Privacy: everything the session writes (zips holding identity vectors of uploaded faces, and,
    under `build_demo`, the uploads themselves) lives in one private temporary folder, `root`,
    removed by `close()`, when the session is garbage-collected, or at interpreter exit.
    """

    def __init__(self, model: str = "arc2face", analyzer="dlib", *, conditioner: str = "auto", device: str | None = None,
                 analyzer_options: dict | None = None, allow_pickle: bool | None = None) -> None:
        self.model, self.conditioner_kind, self.device, self.allow_pickle = model, conditioner, device, allow_pickle
        self.analyzer_options = check_analyzer_options(analyzer_options or {})
        if not isinstance(analyzer, str):
            from synthface.faces import check_analyzer

            if self.analyzer_options:
                raise InvalidInputError("analyzer_options apply to an analyser given by name; configure an analyser "
                                        "instance before passing it.")
            check_analyzer(analyzer)
        self.analyzer_name = analyzer if isinstance(analyzer, str) else analyzer.name
        self._analyzer = None if isinstance(analyzer, str) else analyzer
        self._conditioners: dict[str, object] = {}
        self._renderer = None  # synthface.render.Renderer of the last model used
        self._lcm: dict | None = None  # LCM state of the loaded pipeline; dropped with it
        self._lock = threading.Lock()
        self.root = Path(tempfile.mkdtemp(prefix="synthface-demo-"))  # mode 0700: this user only
        self.outputs = self.root / "outputs"
        self.uploads = self.root / "uploads"
        self.outputs.mkdir()
        self.uploads.mkdir()
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), ignore_errors=True)

    def close(self) -> None:
        """Remove the session's temporary folder (uploads, zips); safe to call more than once."""
        self._cleanup()

    # -- components --------------------------------------------------------------------------

    @property
    def analyzer(self):
        if self._analyzer is None:
            from synthface.faces import get_analyzer

            kwargs = _insightface_kwargs() if self.analyzer_name == "insightface" else {}
            self._analyzer = get_analyzer(self.analyzer_name, **{**kwargs, **self.analyzer_options})
        return self._analyzer

    def conditioner(self, model: str):
        from synthface.render import family_for

        key = f"{family_for(model).name}{' (random weights)' if is_random_model(model) else ''}"
        if key not in self._conditioners:
            self._conditioners[key] = make_conditioner(self.conditioner_kind, model, self.analyzer,
                                                       allow_pickle=self.allow_pickle)
        return self._conditioners[key]

    def renderer(self, model: str):
        """The `synthface.render.Renderer` of `model`, loaded on first use and kept until another
        model is asked for (the previous one, and its LCM state, are released first)."""
        with self._lock:
            if self._renderer is None or self._renderer.name != model:
                from synthface.devices import resolve_device
                from synthface.render import build_renderer

                self._renderer, self._lcm = None, None
                target = resolve_device(self.device)
                self._renderer = build_renderer(model, device=target, dtype="fp16" if target.type == "cuda" else "fp32",
                                                allow_pickle=self.allow_pickle)
            return self._renderer

    # -- one request -------------------------------------------------------------------------

    def identity(self, photos: Sequence[str] | None, model: str, random_seed: int | None = None) -> Identity:
        conditioner = self.conditioner(model)
        if random_seed is not None:
            return random_identity(random_seed, self.analyzer, conditioner)
        return identity_from_photos(list(photos or []), self.analyzer, conditioner)

    def render(self, identity: Identity, settings: Settings, model: str) -> list[Rendered]:
        """Render `settings.num_images` images of `identity`, then judge each one. Steps and
        guidance reach the renderer per request (families without them ignore them)."""
        from synthface.identity import perturb
        from synthface.render import RenderSettings

        settings.check()
        seeds = settings.image_seeds()
        base = np.repeat(identity.vector[None], len(seeds), axis=0)
        conditions = base if settings.variation >= 1.0 else perturb(base, settings.variation, seed=seeds)
        renderer = self.renderer(model)
        self._set_lcm(renderer.pipeline, model, settings.lcm)
        images = replace(renderer, settings=RenderSettings(settings.steps, settings.guidance))(conditions, seeds)
        verdicts = judge(images, identity.reference, self.analyzer)
        condition_cos = conditions @ identity.vector
        return [
            Rendered(k + 1, im, s, float(cc), c, v)
            for k, (im, s, cc, (c, v)) in enumerate(zip(images, seeds, condition_cos, verdicts))
        ]

    def _set_lcm(self, pipe, model: str, on: bool) -> None:
        """Switch LCM-LoRA sampling on or off: the LoRA is loaded and fused once, then unfused and
        fused again with the scheduler swapped, so the toggle costs no reload. The state belongs to the
        loaded pipeline and is dropped when another model is loaded."""
        state = self._lcm
        if on == (state is not None and state["on"]):
            return
        if on and state is None:
            if not lcm_available(model):
                raise ModelNotFoundError(
                    "LCM needs a real Stable Diffusion 1.5 based model, the peft package (`pip install peft`) and the "
                    "LCM-LoRA weights (`synthface models download lcm-lora-sdv15`)."
                )
            from synthface import weights

            lora = weights.find("lcm-lora-sdv15")
            default = pipe.scheduler
            pipe.use_lcm(str(lora.parent), weight_name=lora.name)
            state = self._lcm = {"default": default, "lcm": pipe.scheduler}
        elif on:
            pipe.fuse_lora()
            pipe.scheduler = state["lcm"]
        else:
            pipe.unfuse_lora()
            pipe.scheduler = state["default"]
        state["on"] = on

    def write_zip(self, results: Sequence[Rendered], identity: Identity, settings: Settings, model: str) -> Path:
        """A zip of the images (PNG) and manifest.json: settings, identity source, per-image verdicts."""
        from PIL import Image

        self._prune()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.outputs / f"synthface-{stamp}-seed{settings.seed}.zip"
        conditioner = self.conditioner(model)
        manifest = {
            "model": model,
            "analyzer": self.analyzer.name,
            "conditioning": conditioner.name,
            "conditioning_note": conditioner.note or None,
            "identity": identity.source,
            "identity_vector": [round(float(x), 7) for x in identity.vector],
            "settings": asdict(settings),
            "same_person_cos": self.analyzer.same_person_cos,
            "judged_against": "photos" if identity.reference is not None and identity.source.get("kind") == "photos"
            else "identity vector" if identity.reference is not None else "centre of the generated faces",
            "licence": self.licence_note(model),
            "images": [],
        }
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for r in results:
                name = f"image_{r.index:02d}_seed{r.seed}.png"
                buf = io.BytesIO()
                Image.fromarray(r.image).save(buf, format="PNG")
                zf.writestr(name, buf.getvalue())
                manifest["images"].append(
                    {"file": name, "seed": r.seed, "condition_cos": round(r.condition_cos, 6),
                     "id_cos": None if r.cos is None else round(r.cos, 6), "verdict": r.verdict}
                )
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        return path

    def licence_note(self, model: str) -> str:
        """What the generator's and the analyser's licences say (synthface.weights and the analyser's own)."""
        from synthface.weights import licence

        gen = licence(model)
        note = f"Generator {model}: {gen.text}. Analyser {self.analyzer.name}: {self.analyzer.license}."
        if gen.restricted or self.analyzer.license_restricted:
            note += " Commercial use of these images is excluded."
        return note

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_OUTPUTS_S
        for old in self.outputs.glob("*.zip"):
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)


def check_analyzer_options(options: dict) -> dict:
    """`options` when every name is a string and every value a string, integer, float or boolean
    (what a recipe's `filtering.analyzer_options` holds), else InvalidInputError; whether the
    analyser takes them is checked when it is built (`synthface.faces.build_analyzer`)."""
    if not isinstance(options, dict):
        raise InvalidInputError(f"analyzer_options must be a mapping of option names to values, got {options!r}.")
    for name, value in options.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidInputError(f"Analyser option name {name!r} is not a valid keyword name (e.g. device, runtime).")
        if not isinstance(value, (str, int, float, bool)):
            raise InvalidInputError(
                f"Analyser option {name} = {value!r} is a {type(value).__name__}; options are strings, integers, "
                "floats or booleans, as in a recipe's filtering.analyzer_options."
            )
    return dict(options)


def _insightface_kwargs() -> dict:
    """insightface analyser settings: Arc2Face's arcface.onnx as recogniser when installed (then the
    judge and the conditioning share one space), else the antelopev2 pack's own."""
    from synthface import weights

    try:
        return {"recognizer": weights.find("arc2face-arcface")}
    except ModelNotFoundError:
        return {}


#: The weights a face analyser of the demo needs (registry names), by analyser name.
ANALYZER_WEIGHTS = {"dlib": "dlib", "insightface": "antelopev2"}


def generator_weights(model: str) -> list[tuple[str, ...]]:
    """The registry entries (`synthface.weights`) that `model` needs to draw a person, as groups of
    alternatives (one found locally per group is enough): its own weights, SD 1.5's parts for
    Arc2Face, and the recogniser its ID vectors come from (a real Vec2Face: its own, else
    Arc2Face's). Random-weight test models need none; a local path needs only the recogniser."""
    if is_random_model(model):
        return []
    from synthface.weights import REGISTRY

    groups = [(model,)] if model in REGISTRY else []
    if model == "arc2face":
        groups.append(("sd15",))
    groups.append(("vec2face-arcface", "arc2face-arcface") if _vec2face_family(model) else ("arc2face-arcface",))
    return groups


def missing_weights(model: str) -> list[str]:
    """The registry entries `model` needs that are not found locally (one per unmet group of
    `generator_weights`, its first choice), in order; [] when it can run."""
    return [group[0] for group in generator_weights(model) if not any(_found(name) for name in group)]


def _found(name: str) -> bool:
    from synthface import weights

    try:
        weights.find(name)
    except ModelNotFoundError:
        return False
    return True


def installed_models(current: str | None = None) -> list[str]:
    """Model choices for the page: `current` first (the launched one), then every generator
    `synthface.render.generator_names` lists whose weights are found locally (`missing_weights`),
    then the random-weight test models, which need none."""
    from synthface.render import generator_names

    names = generator_names()
    real = [n for n in names if not is_random_model(n) and not missing_weights(n)]
    return list(dict.fromkeys([*([current] if current else []), *real, *(n for n in names if is_random_model(n))]))


def default_model() -> str:
    """The model `synthface demo` starts on without --model: the first real generator whose weights
    are all found locally (Arc2Face first), else the random-weight "tiny" model."""
    return next((n for n in installed_models() if not is_random_model(n)), "tiny")


def weights_notice(model: str, analyzer: str = "dlib", analyzer_options: dict | None = None) -> list[str]:
    """What the demo says at start about weights: one line per generator (and the analyser, unless
    `analyzer_options` point it at files of their own) whose weights are not found locally, each with
    the commands that fetch them; [] when nothing is missing."""
    from synthface.render import generator_names
    from synthface.weights import spec

    lines = []
    for name in dict.fromkeys([model, *generator_names()]):
        missing = missing_weights(name)
        if missing:
            fetch = "; ".join(spec(m).fetch_command for m in missing)
            lines.append(f"{name} is not offered: {', '.join(missing)} not found locally. Get {'it' if len(missing) == 1 else 'them'} with: {fetch}")
    needed = None if analyzer_options else ANALYZER_WEIGHTS.get(analyzer)
    if needed and not _found(needed):
        lines.append(f"The {analyzer} analyser needs {needed}, not found locally. Get it with: {spec(needed).fetch_command}")
    return lines


def require_model_weights(model: str) -> None:
    """Refuse (ModelNotFoundError) a model whose weights are not all found locally, naming each
    missing one with the command that fetches it and the way to start without them."""
    missing = missing_weights(model)
    if missing:
        from synthface.weights import spec

        fetch = "; ".join(spec(m).fetch_command for m in missing)
        raise ModelNotFoundError(
            f"The {model} model needs weights that are not found locally: {', '.join(missing)}. Get them with: "
            f"{fetch}. Or start the demo without --model: it offers the models that are installed and the "
            "random-weight test models (synthface demo --model tiny checks the page offline)."
        )


def lcm_available(model: str) -> bool:
    """LCM-LoRA can be switched on: a real Arc2Face model, peft installed, the LoRA weights found locally."""
    import importlib.util

    from synthface.render import Arc2FaceFamily, family_for

    if is_random_model(model) or not isinstance(family_for(model), Arc2FaceFamily):  # LCM-LoRA is for SD 1.5
        return False
    if importlib.util.find_spec("peft") is None:
        return False
    from synthface import weights

    try:
        weights.find("lcm-lora-sdv15")
        return True
    except ModelNotFoundError:
        return False


def sampler_settings(model: str) -> tuple[str, ...]:
    """The sampler controls ("steps", "guidance") that mean something to `model`'s family, as it
    declares them (`GeneratorFamily.sampler_settings`): none for Vec2Face's one-pass models."""
    from synthface.render import family_for

    return tuple(family_for(model).sampler_settings)


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)
