"""The one `Renderer` contract and what a `GeneratorFamily` declares.

A `Renderer` is a loaded generator as a callable: condition vectors and one seed per image in, uint8
images out (`synthface.generators.build_renderer` makes one). It seeds one CPU `torch.Generator` per
image (so an image depends only on its seed and condition vector, never on what shares its batch)
and converts to uint8 the one way its family declares (`GeneratorFamily.to_uint8`). A plain callable
`f(conditions, seeds) -> list of (H, W, 3) uint8 arrays` (`RenderFunction`) is the same contract
without a family: `engine.run(renderer=f)` takes either (`RendererLike`), and what any renderer
returns is checked at the boundary by `check_images` (count, numpy (H, W, 3) RGB, uint8; floats in
[0, 1] converted as the families convert).

A family is a `GeneratorFamily` subclass in a folder of its own (`synthface/generators/<family>/`)
or in another package (an entry point in the group "synthface.generators", see `registry`); its
pipeline takes `id_embeds`, `generator` and `output_type="pt"` (floats in [0, 1], (B, 3, H, W)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from synthface.errors import InvalidInputError

log = logging.getLogger("synthface.render")  # the name users filter on; kept

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RenderSettings:
    """What one render call asks of the model; a family passes the fields its pipeline takes.

    steps: denoising steps; guidance: classifier-free guidance scale; resolution: image side in
    pixels (None: the model's native size); sampler: the recipe's `generation.sampler` section as a
    mapping (which denoising procedure and its thresholds, for a family declaring "sampler"; None:
    the family's default). The pipeline checks the bounds when it is called.
    """

    steps: int = 25
    guidance: float = 3.0
    resolution: int | None = None
    sampler: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Optimizations:
    """Speed and memory settings applied to a pipeline once, when its renderer is built.

    attention: None (the family's default, its `optimize` says which), "sdpa", or "xformers" (needs
    an xformers build matching the installed torch; nothing installs one). channels_last: UNet and
    VAE in channels-last memory format (faster convolutions on CUDA tensor cores). compile:
    `torch.compile` the denoiser (slow first batch). vae_slicing: decode one image at a time.
    """

    attention: str | None = None
    channels_last: bool = False
    compile: bool = False
    vae_slicing: bool = False


#: Every option a family may declare (`GeneratorFamily.options`): the sampler fields of
#: `RenderSettings` it reads ("steps", "guidance"), LCM-LoRA sampling ("lcm"), target head poses
#: ("pose", for pipelines that load a pose model), AttrOP on the identity centres ("attrop"), a choice
#: of denoising procedure (`RenderSettings.sampler`, "sampler") and one negative identity per image
#: (`negatives=` in the render call, "negatives").
OPTIONS = frozenset({"steps", "guidance", "lcm", "pose", "attrop", "sampler", "negatives"})


class GeneratorFamily:
    """One kind of identity-conditioned generator: what it declares, how to load, optimise and call it.

    The declarations (class attributes) are what the engine, the demo, the CLI and `synthface.weights`
    read, so nothing outside a family's own folder asks for its type or name: `name`, `title`,
    `models` (and which of them are `random_models`), the local paths it `claims`, `options` (a
    subset of `OPTIONS`), `native_size`, `recognisers` (its conditioning recogniser, registry names),
    `lcm_lora`, its required weights (`required_weights`) and licences (`licence`), its uint8
    conversion (`to_uint8`).

    A family's pipeline must accept `pipe(id_embeds=(B, D) float32 tensor, generator=[B CPU
    torch.Generator], output_type="pt", **call_kwargs(...))` and return an output whose `.images`
    is a (B, 3, H, W) float tensor in [0, 1], image i drawn from generator i alone (unless its own
    `to_uint8` converts what it returns). A family defines load, accepts, optimize, call_kwargs and
    native_resolution, and one declaring "negatives" negative_kwargs (the base raises for each it
    lacks; test doubles define only what they use); the rest have defaults.
    """

    name: str = ""
    #: How people write the family's name in a sentence ("Disc generator"); default: `name`.
    title: str = ""
    #: Models it loads by name alone (downloadable or built in): what `generator_names` lists.
    models: tuple[str, ...] = ()
    #: Of `models`, those with random weights (plumbing tests: they draw no faces and need no files).
    random_models: tuple[str, ...] = ()
    #: Names routed to it besides `models` (case-insensitive; a trailing "*" makes a prefix).
    aliases: tuple[str, ...] = ()
    #: Whether it renders any name or local path no other family takes (one family does: the default).
    catch_all: bool = False
    #: The options (of `OPTIONS`) that apply to it; a UI hides the others, a recipe asking for one
    #: it lacks is refused.
    options: frozenset[str] = frozenset({"steps", "guidance"})
    #: Its only image side, or None when the side depends on the loaded model (`native_resolution`).
    native_size: int | None = None
    #: The weights-registry names of the recogniser its ID vectors come from, first choice first.
    recognisers: tuple[str, ...] = ()
    #: Those a random-weight model is conditioned on (None: `recognisers`).
    test_recognisers: tuple[str, ...] | None = None
    #: Of `models`, those loaded with pose control (only with "pose" in `options`).
    pose_models: tuple[str, ...] = ()
    #: The weights-registry name of its LCM-LoRA (only with "lcm" in `options`).
    lcm_lora: str | None = None

    def load(self, model: str, *, device: torch.device, dtype: torch.dtype, allow_download: bool,
             allow_pickle: bool | None, **options):
        """The pipeline for `model` on `device` in `dtype`; ModelNotFoundError when it is not available."""
        raise NotImplementedError(f"{type(self).__name__} must define load() (GeneratorFamily's interface)")

    def accepts(self, pipeline) -> bool:
        """Whether `pipeline` (an object built elsewhere) belongs to this family."""
        raise NotImplementedError(f"{type(self).__name__} must define accepts() (GeneratorFamily's interface)")

    def optimize(self, pipeline, optimizations: Optimizations) -> None:
        """Apply `optimizations` to `pipeline` in place; InvalidInputError for a setting it lacks."""
        raise NotImplementedError(f"{type(self).__name__} must define optimize() (GeneratorFamily's interface)")

    def call_kwargs(self, pipeline, settings: RenderSettings) -> dict[str, Any]:
        """The pipeline's own keyword arguments for `settings` (besides id_embeds, generator, output_type)."""
        raise NotImplementedError(f"{type(self).__name__} must define call_kwargs() (GeneratorFamily's interface)")

    def native_resolution(self, pipeline) -> int:
        """The image side the pipeline renders when no resolution is asked for. Default: `native_size`."""
        if self.native_size is None:
            raise NotImplementedError(f"{type(self).__name__} must define native_resolution() or native_size")
        return self.native_size

    def negative_kwargs(self, pipeline, negatives: torch.Tensor) -> dict[str, Any]:
        """The pipeline's keyword arguments carrying `negatives` ((B, D) float32, one negative identity
        per image, in the conditions' space), for a family declaring "negatives"."""
        raise NotImplementedError(f"{type(self).__name__} declares 'negatives' and must define negative_kwargs()")

    def takes_poses(self, pipeline) -> bool:
        """Whether `pipeline` takes `poses=` ((B, 2) float32 target yaw, pitch in degrees, one row per
        image) as a call argument. Default: no."""
        return False

    def claims(self, path: str) -> bool:
        """Whether the existing local file or folder `path` holds this family's weights; tried, in
        registration order, before a path falls to the default family. Default: no."""
        return False

    def is_random(self, model: str) -> bool:
        """Whether `model` is one of its random-weight test models."""
        return model in self.random_models

    def conditioning(self, model: str) -> tuple[str, ...]:
        """The recognisers (registry names) `model`'s ID vectors come from, first choice first."""
        if self.is_random(model) and self.test_recognisers is not None:
            return self.test_recognisers
        return self.recognisers

    def required_weights(self, model: str) -> list[tuple[str, ...]]:
        """The registry entries (`synthface.weights`) `model` needs to draw a person, as groups of
        alternatives (one found locally per group is enough): its own, then its recogniser's.
        Random-weight models need none; a local path needs only the recogniser."""
        if self.is_random(model):
            return []
        from synthface.weights import REGISTRY

        own = [(model,)] if model in REGISTRY else []
        return own + ([self.conditioning(model)] if self.conditioning(model) else [])

    def conditioner(self, model: str, analyzer, *, allow_pickle: bool | None = None):
        """`model`'s conditioner (photos and faces -> unit ID vectors) over the first of its
        recognisers found locally (`synthface.generators.conditioning.conditioner_for`)."""
        from synthface.generators.conditioning import conditioner_for

        return conditioner_for(self, model, analyzer, allow_pickle=allow_pickle)

    def recogniser_conditioner(self, name: str, path, analyzer, *, allow_pickle: bool | None, note: str = ""):
        """The conditioner over recogniser `name` found at `path`. Default: an ONNX ArcFace recogniser."""
        from synthface.generators.conditioning import onnx_conditioner

        return onnx_conditioner(path, analyzer, note)

    def conditioning_note(self, model: str, recogniser: str) -> str:
        """What the user should know when `model` is conditioned on `recogniser` (a fallback, say)."""
        return ""

    def licence(self, model: str):
        """The licence (`synthface.weights.Licence`) of what `model` makes, from the one licence table:
        `RANDOM_WEIGHTS` for its random models, else the registry entry's (unknown for a local path)."""
        from synthface.weights import RANDOM_WEIGHTS, licence

        return RANDOM_WEIGHTS if self.is_random(model) else licence(model)

    def converted(self, model: str, *, allow_pickle: bool, **options):
        """(pipeline, one-line summary): `model`'s published files loaded for `save_pretrained` into the
        family's safe folder format (`synthface models convert`). Default: nothing to convert."""
        raise InvalidInputError(
            f"The {self.display_name} generator family has nothing to convert: its models load as they are."
        )

    def attrop_tools(self):
        """The AttrOP module (`AttrOPConfig`, `AttrOPEstimators`, `attrop`) of a family declaring "attrop"."""
        raise InvalidInputError(f"The {self.display_name} generator family has no AttrOP (identities.attrop).")

    def to_uint8(self, images: torch.Tensor) -> list[np.ndarray]:
        """The pipeline's (B, 3, H, W) floats in [0, 1] -> B (H, W, 3) uint8 images, the family's one
        conversion. Default: `to_uint8` (rounded half to even)."""
        return to_uint8(images)

    @property
    def display_name(self) -> str:
        return self.title or self.name


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`dtype` ("fp32", "fp16", "bf16" or a torch float dtype) as rendered on `device`: fp16 on a CPU
    becomes fp32 (with a warning), since it is slow and imprecise there."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InvalidInputError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    elif dtype not in DTYPES.values():
        raise InvalidInputError(f"Unsupported dtype {dtype}; choose one of {', '.join(DTYPES)}.")
    if device.type == "cpu" and dtype == torch.float16:
        log.warning("fp16 is slow and imprecise on CPU; rendering in fp32 instead")
        return torch.float32
    return dtype


MAX_SEED = 2**64 - 1  # the largest seed a torch generator takes


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed: the image's starting noise is drawn on the
    CPU whatever the device, so a seed gives the same image on every machine and in every batch.
    A seed that is not an integer from 0 to MAX_SEED is an InvalidInputError."""
    bad = [s for s in seeds if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer))
           or not 0 <= s <= MAX_SEED]
    if bad:
        raise InvalidInputError(f"Render seeds must be integers from 0 to 2**64 - 1, one per image; got {bad[0]!r}.")
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def renderer_name(renderer) -> str:
    """How messages name `renderer`: a `Renderer` by its family and model, a function or method by its
    qualified name, another callable by its class (else its repr, shortened)."""
    if isinstance(renderer, Renderer):
        return f"the {renderer.family.name!r} renderer of {renderer.name!r}"
    name = getattr(renderer, "__qualname__", None)
    if isinstance(name, str):
        module = getattr(renderer, "__module__", None)
        return f"the renderer {module}.{name}" if module else f"the renderer {name}"
    if type(renderer).__call__ is not object.__call__ and type(renderer).__repr__ is object.__repr__:
        return f"the renderer {type(renderer).__module__}.{type(renderer).__qualname__}"
    text = repr(renderer)
    return f"the renderer {text if len(text) <= 120 else text[:117] + '...'}"


def check_images(images, count: int, renderer) -> list[np.ndarray]:
    """What `renderer` returned for `count` seeds, checked at the boundary: the engine's images.

    Accepted: a list or tuple of `count` images (or one (count, H, W, 3) array), each an (H, W, 3)
    numpy array (RGB, channels last) of uint8, returned as it is, or of floats in [0, 1] (any float
    dtype), converted as the built-in families convert: x * 255 in float32, rounded half to even
    (`to_uint8`). Anything else (another count, a torch tensor or PIL image, integers other than
    uint8, floats outside [0, 1] or not finite, grey, RGBA or channels-first arrays) is an
    InvalidInputError naming the renderer (`renderer_name`), the image and what it was.
    """
    who = renderer_name(renderer)
    rule = (f"{who[0].upper()}{who[1:]} must return a list of {count} RGB images, one per seed in the seeds' "
            "order, each an (H, W, 3) numpy array of uint8 (or of floats in [0, 1], converted to uint8)")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        kind = f"one array of shape {images.shape}" if isinstance(images, np.ndarray) else f"a {type(images).__name__}"
        raise InvalidInputError(f"{rule}; it returned {kind}.")
    if len(images) != count:
        raise InvalidInputError(f"{rule}; it returned {len(images)} image(s) for {count} seed(s).")
    return [_checked_image(image, i, rule) for i, image in enumerate(images)]


def _checked_image(image, index: int, rule: str) -> np.ndarray:
    def refuse(what: str) -> InvalidInputError:
        return InvalidInputError(f"{rule}; image {index} is {what}.")

    if not isinstance(image, np.ndarray):
        hint = {"Tensor": " (convert with tensor.permute(1, 2, 0).cpu().numpy())",
                "Image": " (convert with numpy.asarray(image.convert('RGB')))"}.get(type(image).__name__, "")
        raise refuse(f"a {type(image).__module__}.{type(image).__name__}, not a numpy array{hint}")
    shape = image.shape
    if image.ndim != 3 or shape[2] != 3 or 0 in shape:
        if image.ndim == 3 and shape[0] == 3 and shape[2] != 3:
            hint = "channels first; transpose it to (H, W, 3)"
        elif image.ndim == 3 and shape[2] == 4:
            hint = "4 channels (RGBA?); keep the colour channels, image[..., :3]"
        elif image.ndim == 2:
            hint = "grey (one channel); stack it to three, numpy.repeat(image[..., None], 3, axis=2)"
        else:
            hint = "not an (H, W, 3) image"
        raise refuse(f"an array of shape {shape}: {hint}")
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise refuse(f"of dtype {image.dtype}; convert it with numpy.clip(image, 0, 255).astype(numpy.uint8) if its "
                     "values are 0-255")
    pixels = image.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise refuse("a float array with NaN or inf values")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        scale = "; values up to 255 look like 0-255 pixels: cast them with .astype(numpy.uint8)" if high > 1.0 else ""
        raise refuse(f"a float array with values from {low:g} to {high:g}, outside [0, 1]{scale}")
    return np.rint(pixels * np.float32(255)).astype(np.uint8)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) floats in [0, 1] -> B (H, W, 3) uint8 arrays, rounded half to even on the tensor's
    device: the same bytes as numpy's `np.clip(np.rint(im * 255), 0, 255).astype(np.uint8)`."""
    pixels = images.float().mul(255).round().clamp(0, 255).to(torch.uint8)
    return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


@dataclass(frozen=True)
class Renderer:
    """A loaded generator as a callable: `renderer(conditions (B, D) float32, seeds [B]) -> B uint8
    (H, W, 3) images`, image i determined by (conditions[i], seeds[i]) alone.

    `dataclasses.replace(renderer, settings=...)` renders the same pipeline with other steps,
    guidance or resolution (the demo's per-request settings) without loading anything again.
    """

    pipeline: Any
    family: GeneratorFamily
    name: str  # the model name (licence look-up): as given, or the family's for a pipeline object
    settings: RenderSettings = field(default_factory=RenderSettings)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.dtype

    @property
    def resolution(self) -> int:
        """The side of the images this renderer makes."""
        return self.settings.resolution or self.family.native_resolution(self.pipeline)

    @property
    def licence(self):
        """The model's licence (`synthface.weights.Licence`) for the dataset card, as its family declares
        it (`GeneratorFamily.licence`); unknown for a local path."""
        return self.family.licence(self.name)

    @property
    def takes_poses(self) -> bool:
        """Whether this generator has pose control (`poses=` in `__call__`): a family declaring "pose"
        whose loaded pipeline has it."""
        return "pose" in self.family.options and self.family.takes_poses(self.pipeline)

    def require_poses(self, who: str) -> None:
        """InvalidInputError, starting with `who` (who asks for poses), unless the generator has pose control."""
        if not self.takes_poses:
            from synthface.generators.registry import families

            models = [(m, f.is_random(m)) for f in families() if "pose" in f.options for m in f.pose_models]
            real = ", ".join(repr(m) for m, random in models if not random)
            tests = ", ".join(repr(m) for m, random in models if random)
            suggestion = f" ({real}{f'; {tests} for plumbing tests' if tests else ''})" if models else ""
            raise InvalidInputError(
                f"{who} renders with a {self.family.name!r} generator that has no pose control, so it cannot "
                f"follow target poses. Use a generator with a pose model{suggestion}, or remove the poses "
                "(variation.pose)."
            )

    @property
    def takes_negatives(self) -> bool:
        """Whether this generator takes one negative identity per image (`negatives=` in `__call__`):
        a family declaring "negatives"."""
        return "negatives" in self.family.options

    def require_negatives(self, who: str) -> None:
        """InvalidInputError, starting with `who` (who asks for negatives), unless the generator takes them."""
        if not self.takes_negatives:
            from synthface.generators.registry import families_with

            raise InvalidInputError(
                f"{who} renders with a {self.family.name!r} generator, which takes no negative identities "
                "(NegFaceDiff's negative guidance). Use a generator whose family takes them "
                f"({families_with('negatives')}), or remove generation.sampler.negative."
            )

    def __call__(self, conditions: np.ndarray, seeds: Sequence[int], poses: np.ndarray | None = None,
                 negatives: np.ndarray | None = None) -> list[np.ndarray]:
        """Image i from conditions[i], seeds[i] and, when given, poses[i] ((B, 2) target yaw, pitch in
        degrees; only for a generator with pose control, see `require_poses`) and negatives[i] ((B, D):
        the identity image i is steered away from, in the conditions' space; only for a family
        declaring "negatives", see `require_negatives`, and needed when `settings.sampler` names a
        negative)."""
        kwargs = self.family.call_kwargs(self.pipeline, self.settings)
        if poses is not None:
            self.require_poses("This render call")
            kwargs["poses"] = torch.from_numpy(np.ascontiguousarray(poses, dtype=np.float32))
        wanted = (self.settings.sampler or {}).get("negative")
        if negatives is not None:
            self.require_negatives("This render call")
            shape = getattr(negatives, "shape", None)
            if shape is None or len(shape) != 2 or shape[0] != len(seeds):
                raise InvalidInputError(
                    f"Render negatives must be a (B, D) array, one negative identity per image ({len(seeds)} here), "
                    f"in the conditions' space; got {'a ' + type(negatives).__name__ if shape is None else shape}."
                )
            kwargs.update(self.family.negative_kwargs(
                self.pipeline, torch.from_numpy(np.ascontiguousarray(negatives, dtype=np.float32))))
        elif wanted:
            raise InvalidInputError(
                f"This renderer's settings ask for NegFaceDiff's negative guidance (sampler negative = {wanted!r}), "
                "but the render call passes no negatives: pass negatives= (B, D), one negative identity per image "
                "(synthface.identity.negatives picks them from the bank), or drop the negative from the settings."
            )
        try:
            embeds = torch.from_numpy(np.ascontiguousarray(conditions, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"Render conditions must be a (B, D) array of numbers, one row per image ({exc}).") from None
        out = self.pipeline(
            id_embeds=embeds,
            generator=image_generators(seeds),
            output_type="pt",
            **kwargs,
        )
        images = getattr(out, "images", None)
        tensor = isinstance(images, torch.Tensor)
        found = (f"a {images.dtype} tensor of shape {tuple(images.shape)}" if tensor
                 else f"images of type {type(images).__name__}")
        problem = InvalidInputError(
            f"The {self.family.name!r} generator's pipeline ({type(self.pipeline).__qualname__}) returned {found} "
            f"for {len(seeds)} seed(s); with output_type='pt' a family's pipeline must return .images as a "
            f"({len(seeds)}, 3, H, W) float tensor in [0, 1] (see GeneratorFamily), unless its family's to_uint8 "
            "converts what it returns."
        )
        if tensor and not (images.ndim == 4 and images.shape[:2] == (len(seeds), 3) and images.is_floating_point()):
            raise problem
        try:
            converted = self.family.to_uint8(images)
        except (AttributeError, TypeError, ValueError, RuntimeError):
            raise problem from None
        return check_images(converted, len(seeds), self)


#: The plain form of the contract: `f(conditions (B, D) float32, seeds [B]) -> B (H, W, 3) images`.
RenderFunction = Callable[[np.ndarray, Sequence[int]], Sequence[np.ndarray]]
#: What the engine renders with: a loaded `Renderer` or a plain `RenderFunction`.
RendererLike = Renderer | RenderFunction
