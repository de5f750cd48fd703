"""The identity-customisation demo's session: photos of one person (or a random identity) in, new
images of that identity out, each captioned with its measured cosine to the identity and a keep/drop
verdict.

`DemoSession` holds the analyser, the conditioners and one renderer (`synthface.generators`);
`synthface.demo.photos` makes the identity, `synthface.demo.conditioning` the conditioner (the
family's declared recogniser, or a stand-in), `synthface.demo.page` is the thin Gradio page over it.
Any generator a registered family declares can be chosen, and what the page offers for it (steps,
guidance, LCM) is what its family declares (`GeneratorFamily.options`).

Two embedding spaces meet here: the generator is conditioned on the recogniser it was trained on,
and images are judged by the analyser (dlib offline, or insightface).
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from synthface.demo.conditioning import make_conditioner
from synthface.demo.photos import Identity, identity_from_photos, random_identity
from synthface.errors import InvalidInputError, ModelNotFoundError
from synthface.faces.attributes import DEFAULT_ATTRIBUTE_ANALYZER

#: Most images one request renders.
MAX_IMAGES = 8
#: Generated images and zips older than this are removed from the demo's temporary folder (which
#: is removed whole when the demo stops).
KEEP_OUTPUTS_S = 3600


def is_random_model(model: str) -> bool:
    """Whether `model` is a random-weight test model (plumbing only; draws no faces), as its family declares."""
    from synthface.generators import family_for

    return family_for(model).is_random(model)


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
    attributes: object | None = None  # its face's apparent age and gender (synthface.faces.attributes.Attributes)

    @property
    def caption(self) -> str:
        if self.verdict == "no face":
            measured = "no face found"
        elif self.cos is None:
            measured = "ID cos n/a (no reference)"
        else:
            measured = f"ID cos {self.cos:.2f} → {self.verdict}"
        caption = f"{measured} · #{self.index} seed {self.seed} · condition cos {self.condition_cos:.2f}"
        if self.attributes is not None:
            caption += f" · apparent age {self.attributes.age:.0f}, {self.attributes.gender}"
        return caption


def judge(images: Sequence[np.ndarray], reference: np.ndarray | None, analyzer, found=None
          ) -> list[tuple[float | None, str]]:
    """(cosine, verdict) per image: largest face vs `reference`, or vs the faces' robust centre.
    `found`: the analyser's faces per image, when already detected."""
    from synthface.faces import l2_normalize

    threshold = analyzer.same_person_cos
    found = analyzer.analyze(list(images)) if found is None else found
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

    model: any name or local path `synthface.generators.build_renderer` takes (`generator_names`; the
    random-weight ones for tests); the last model used stays loaded, in fp16 on CUDA and
    fp32 elsewhere. analyzer: a backend name for `get_analyzer` or an analyser instance.
    analyzer_options: keyword arguments for a named analyser, as a recipe's
    `filtering.analyzer_options` (e.g. {"runtime": "torch", "device": "cuda"} for insightface on the
    device); they override the demo's defaults, and an option the analyser does not take is an
    InvalidInputError naming the ones it does (when the analyser is built: `analyzer`).
    allow_pickle: read pickled weights (`.pth` generator or recogniser files);
    SYNTHFACE_ALLOW_PICKLE=1 opts in as well.

    Privacy: everything the session writes (zips holding identity vectors of uploaded faces, and,
    under `build_demo`, the uploads themselves) lives in one private temporary folder, `root`,
    removed by `close()`, when the session is garbage-collected, or at interpreter exit.
    """

    def __init__(self, model: str = "arc2face", analyzer="dlib", *, conditioner: str = "auto", device: str | None = None,
                 analyzer_options: dict | None = None, allow_pickle: bool | None = None,
                 attribute_analyzer: str | None = DEFAULT_ATTRIBUTE_ANALYZER) -> None:
        self.attribute_analyzer_name = attribute_analyzer
        self._attribute_analyzer: object | None = None
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
        self._renderer = None  # synthface.generators.Renderer of the last model used
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

    @property
    def attribute_analyzer(self):
        """The apparent-age-and-gender analyser, or None when it is not installed (the attributes extra) or
        the session was made with attribute_analyzer=None: captions then say what they say without it."""
        if self._attribute_analyzer is None and self.attribute_analyzer_name:
            from synthface.errors import SynthfaceError
            from synthface.faces.attributes import get_attribute_analyzer

            try:
                self._attribute_analyzer = get_attribute_analyzer(self.attribute_analyzer_name)
            except SynthfaceError:
                self.attribute_analyzer_name = None  # asked once: not installed
        return self._attribute_analyzer

    def conditioner(self, model: str):
        from synthface.generators import family_for

        key = f"{family_for(model).name}{' (random weights)' if is_random_model(model) else ''}"
        if key not in self._conditioners:
            self._conditioners[key] = make_conditioner(self.conditioner_kind, model, self.analyzer,
                                                       allow_pickle=self.allow_pickle)
        return self._conditioners[key]

    def renderer(self, model: str):
        """The `synthface.generators.Renderer` of `model`, loaded on first use and kept until another
        model is asked for (the previous one, and its LCM state, are released first)."""
        with self._lock:
            if self._renderer is None or self._renderer.name != model:
                from synthface.devices import resolve_device
                from synthface.generators import build_renderer

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
        from synthface.generators import RenderSettings
        from synthface.identity import perturb

        settings.check()
        seeds = settings.image_seeds()
        base = np.repeat(identity.vector[None], len(seeds), axis=0)
        conditions = base if settings.variation >= 1.0 else perturb(base, settings.variation, seed=seeds)
        renderer = self.renderer(model)
        self._set_lcm(renderer.pipeline, model, settings.lcm)
        images = replace(renderer, settings=RenderSettings(settings.steps, settings.guidance))(conditions, seeds)
        found = self.analyzer.analyze(list(images))
        verdicts = judge(images, identity.reference, self.analyzer, found)
        people = apparent(images, found, self.attribute_analyzer)
        condition_cos = conditions @ identity.vector
        return [
            Rendered(k + 1, im, s, float(cc), c, v, a)
            for k, (im, s, cc, (c, v), a) in enumerate(zip(images, seeds, condition_cos, verdicts, people))
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
                    "LCM needs a real model of a family with LCM-LoRA sampling, the peft package (`pip install peft`) "
                    f"and the LCM-LoRA weights{_lcm_fetch(model)}."
                )
            from synthface import weights
            from synthface.generators import family_for

            lora = weights.find(family_for(model).lcm_lora)
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
        from synthface.generators import model_licence

        gen = model_licence(model)
        note = f"Generator {model}: {gen.text}. Analyser {self.analyzer.name}: {self.analyzer.license}."
        if gen.restricted or self.analyzer.license_restricted:
            note += " Commercial use of these images is excluded."
        return note

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_OUTPUTS_S
        for old in self.outputs.glob("*.zip"):
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)


def apparent(images: Sequence[np.ndarray], found, attribute_analyzer) -> list:
    """Per image, the apparent age and gender of its largest face (on the box already found), or None."""
    if attribute_analyzer is None:
        return [None] * len(images)
    boxes = [[tuple(float(v) for v in faces[0].bbox)] if faces else [] for faces in found]
    return [people[0] if people else None for people in attribute_analyzer.analyze(list(images), boxes=boxes)]


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
    """insightface analyser settings: the default family's recogniser as the analyser's when installed
    (then the judge and the conditioning share one space), else the antelopev2 pack's own."""
    from synthface import weights
    from synthface.generators import default_family

    try:
        return {"recognizer": weights.find(default_family().recognisers[0])}
    except ModelNotFoundError:
        return {}


#: The weights a face analyser of the demo needs (registry names), by analyser name.
ANALYZER_WEIGHTS = {"dlib": "dlib", "insightface": "antelopev2"}


def generator_weights(model: str) -> list[tuple[str, ...]]:
    """The registry entries (`synthface.weights`) that `model` needs to draw a person, as groups of
    alternatives (one found locally per group is enough), as its family declares them
    (`GeneratorFamily.required_weights`). Random-weight test models need none."""
    from synthface.generators import family_for

    return family_for(model).required_weights(model)


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
    `synthface.generators.generator_names` lists whose weights are found locally (`missing_weights`),
    then the random-weight test models, which need none."""
    from synthface.generators import generator_names

    names = generator_names()
    real = [n for n in names if not is_random_model(n) and not missing_weights(n)]
    return list(dict.fromkeys([*([current] if current else []), *real, *(n for n in names if is_random_model(n))]))


def default_model() -> str:
    """The model `synthface demo` starts on without --model: the first real generator whose weights
    are all found locally (the default family's first), else the default family's random-weight model."""
    from synthface.generators import default_family

    fallback = default_family().random_models[0]
    return next((n for n in installed_models() if not is_random_model(n)), fallback)


def weights_notice(model: str, analyzer: str = "dlib", analyzer_options: dict | None = None) -> list[str]:
    """What the demo says at start about weights: one line per generator (and the analyser, unless
    `analyzer_options` point it at files of their own) whose weights are not found locally, each with
    the commands that fetch them; [] when nothing is missing."""
    from synthface.generators import generator_names
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
    """LCM-LoRA can be switched on: a real model of a family declaring "lcm", peft installed, the
    family's LoRA weights (`GeneratorFamily.lcm_lora`) found locally."""
    import importlib.util

    from synthface.generators import family_for

    family = family_for(model)
    if family.is_random(model) or "lcm" not in family.options or not family.lcm_lora:
        return False
    if importlib.util.find_spec("peft") is None:
        return False
    return _found(family.lcm_lora)


def _lcm_fetch(model: str) -> str:
    from synthface.generators import family_for

    lora = family_for(model).lcm_lora
    return f" (`synthface models download {lora}`)" if lora else ""


def lcm_hint(model: str) -> str:
    """What LCM needs for `model`, for the page's LCM control."""
    from synthface.generators import family_for

    family = family_for(model)
    return (f"needs a real {family.display_name} model, `pip install peft` and "
            f"`synthface models download {family.lcm_lora}`")


def sampler_settings(model: str) -> tuple[str, ...]:
    """The sampler controls ("steps", "guidance") that mean something to `model`'s family, as it
    declares them (`GeneratorFamily.options`): none for a one-pass family."""
    from synthface.generators import family_for

    options = family_for(model).options
    return tuple(name for name in ("steps", "guidance") if name in options)


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)
