"""Model name or pipeline -> a `Renderer`: condition vectors and one seed per image in, uint8 images out.

The one path from "a generator" to "images" for the engine, the demo, `synthface generate` and the
benchmarks. It resolves the device (`synthface.devices.resolve_device`) and the dtype (fp16 on a CPU
renders in fp32, with a warning), applies the speed settings once (`Optimizations`), seeds one CPU
`torch.Generator` per image (so an image depends only on its seed and condition vector, never on
what shares its batch), and converts to uint8 the one way its family declares
(`GeneratorFamily.to_uint8`: Arc2Face rounds, Vec2Face truncates as its published scripts do).
Given the same inputs, every caller gets byte-identical images. What any renderer returns, a
`Renderer` or a plain callable given to `engine.run(renderer=f)`, is checked at the boundary by
`check_images` (count, numpy (H, W, 3) RGB, uint8; floats in [0, 1] converted as the families convert).

Generators plug in through a registry of families keyed by model name (`register_generator`):
Arc2Face answers to "arc2face", "FoivosPar/Arc2Face" and "tiny"; Vec2Face to every name starting
with "vec2face". A local path goes to the family that `claims` it (a Vec2Face checkpoint or folder),
else to the default family, Arc2Face (a local folder, a repo id in an Arc2Face layout). A new family
subclasses `GeneratorFamily`, whose pipeline takes `id_embeds`, `generator` and `output_type="pt"`
(floats in [0, 1], (B, 3, H, W)), and registers its names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from synthface.errors import InvalidInputError

log = logging.getLogger("synthface.render")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RenderSettings:
    """What one render call asks of the model; a family passes the fields its pipeline takes.

    steps: denoising steps; guidance: classifier-free guidance scale; resolution: image side in
    pixels (None: the model's native size). The pipeline checks the bounds when it is called.
    """

    steps: int = 25
    guidance: float = 3.0
    resolution: int | None = None


@dataclass(frozen=True)
class Optimizations:
    """Speed and memory settings applied to a pipeline once, when its renderer is built.

    attention: None (the family's default: PyTorch SDPA for Arc2Face), "sdpa", or "xformers" (needs
    an xformers build matching the installed torch; nothing installs one). channels_last: UNet and
    VAE in channels-last memory format (faster convolutions on CUDA tensor cores). compile:
    `torch.compile` the denoiser (slow first batch). vae_slicing: decode one image at a time.
    """

    attention: str | None = None
    channels_last: bool = False
    compile: bool = False
    vae_slicing: bool = False


class GeneratorFamily:
    """One kind of identity-conditioned generator: how to load it, optimise it and call it.

    A family's pipeline must accept `pipe(id_embeds=(B, D) float32 tensor, generator=[B CPU
    torch.Generator], output_type="pt", **call_kwargs(...))` and return an output whose `.images`
    is a (B, 3, H, W) float tensor in [0, 1], image i drawn from generator i alone. A family
    defines load, accepts, optimize, call_kwargs and native_resolution (the base raises for each it
    lacks; test doubles define only what they use); claims and to_uint8 have defaults.
    """

    name: str = ""
    #: Models it loads by name alone (downloadable or built in): what `generator_names` lists.
    models: tuple[str, ...] = ()
    #: The `RenderSettings` sampler fields its pipeline reads ("steps", "guidance"): a denoising
    #: family reads both; a one-pass family reads none, so a UI hides those controls for it.
    sampler_settings: tuple[str, ...] = ("steps", "guidance")

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
        """The image side the pipeline renders when no resolution is asked for."""
        raise NotImplementedError(f"{type(self).__name__} must define native_resolution() (GeneratorFamily's interface)")

    def takes_poses(self, pipeline) -> bool:
        """Whether `pipeline` takes `poses=` ((B, 2) float32 target yaw, pitch in degrees, one row per
        image) as a call argument. Default: no."""
        return False

    def claims(self, path: str) -> bool:
        """Whether the existing local file or folder `path` holds this family's weights; tried, in
        registration order, before a path falls to the default family. Default: no."""
        return False

    def to_uint8(self, images: torch.Tensor) -> list[np.ndarray]:
        """The pipeline's (B, 3, H, W) floats in [0, 1] -> B (H, W, 3) uint8 images, the family's one
        conversion. Default: `to_uint8` (rounded half to even)."""
        return to_uint8(images)


class Arc2FaceFamily(GeneratorFamily):
    """Arc2Face (`synthface.pipelines.Arc2FacePipeline`): SD 1.5 conditioned on ArcFace ID vectors."""

    name = "arc2face"
    models = ("arc2face", "tiny")

    def load(self, model, *, device, dtype, allow_download, allow_pickle, base=None, lcm_lora=None):
        """`load_arc2face`, then the LCM-LoRA when `lcm_lora` names one (folder, file or repo id)."""
        from synthface.pipelines import load_arc2face

        if model == "tiny":
            # The tiny model's layers are far too small to gain from threads; on few cores the thread
            # hand-off costs more than the work (measured on a busy 2-core machine: ~1 s per call with 2
            # threads, ~0.04 s with 1).
            torch.set_num_threads(1)
        pipe = load_arc2face(model, dtype=dtype, device=device, allow_download=allow_download, base=base,
                             allow_pickle=allow_pickle)
        if lcm_lora:
            pipe.use_lcm(lcm_lora, allow_pickle=allow_pickle)
        return pipe

    def accepts(self, pipeline) -> bool:
        from synthface.pipelines import Arc2FacePipeline

        return isinstance(pipeline, Arc2FacePipeline)

    def optimize(self, pipeline, optimizations):
        pipeline.optimize(attention=optimizations.attention or "sdpa", compile=optimizations.compile,
                          vae_slicing=optimizations.vae_slicing)
        layout = torch.channels_last if optimizations.channels_last else torch.contiguous_format
        pipeline.unet.to(memory_format=layout)
        pipeline.vae.to(memory_format=layout)

    def call_kwargs(self, pipeline, settings):
        return {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance,
                "height": settings.resolution, "width": settings.resolution}

    def native_resolution(self, pipeline) -> int:
        return int(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)


# Exact model names (lower case) and prefixes ("vec2face*") -> family; anything else -> DEFAULT_FAMILY.
_FAMILIES: dict[str, GeneratorFamily] = {}
DEFAULT_FAMILY: GeneratorFamily = Arc2FaceFamily()


def register_generator(name_or_prefix: str, family: GeneratorFamily) -> None:
    """Route model name `name_or_prefix` (case-insensitive), or every name starting with it when it
    ends in "*", to `family`. A name already routed to another family is an InvalidInputError."""
    key = name_or_prefix.strip().lower()
    if not key or key == "*":
        raise InvalidInputError(f"A generator needs a model name or a name prefix ending in '*', got {name_or_prefix!r}.")
    taken = _FAMILIES.get(key)
    if taken is not None and taken is not family:
        raise InvalidInputError(
            f"Model name {name_or_prefix!r} already belongs to the {taken.name!r} generator family; "
            f"pick another name for {family.name!r}."
        )
    _FAMILIES[key] = family


def family_for(model: str | os.PathLike) -> GeneratorFamily:
    """The family that renders `model`: its exact name, else the longest matching prefix, else the
    first family that `claims` it as an existing local path, else the default (Arc2Face, which also
    reads local folders and repo ids in its layouts)."""
    name = os.fspath(model).strip().lower()
    if name in _FAMILIES:
        return _FAMILIES[name]
    prefixes = [k for k in _FAMILIES if k.endswith("*") and name.startswith(k[:-1])]
    if prefixes:
        return _FAMILIES[max(prefixes, key=len)]
    path = os.path.expanduser(os.fspath(model))
    if os.path.exists(path):
        for family in dict.fromkeys(_FAMILIES.values()):
            if family is not DEFAULT_FAMILY and family.claims(path):
                return family
    return DEFAULT_FAMILY


def generator_names() -> list[str]:
    """Every model name a registered family loads by name alone (`GeneratorFamily.models`), in
    registration order: the choices the demo and the CLI offer besides local paths."""
    families = dict.fromkeys([DEFAULT_FAMILY, *_FAMILIES.values()])
    return list(dict.fromkeys(name for family in families for name in family.models))


def family_of_pipeline(pipeline) -> GeneratorFamily:
    """The registered family `pipeline` belongs to; InvalidInputError for an unknown pipeline type."""
    families = list(dict.fromkeys([DEFAULT_FAMILY, *_FAMILIES.values()]))
    for family in families:
        if family.accepts(pipeline):
            return family
    raise InvalidInputError(
        f"No generator family renders a {type(pipeline).__name__}; the registered families are "
        f"{', '.join(f.name for f in families)}. Pass one of their pipelines or a model name."
    )


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
        """The model's licence (`synthface.weights.Licence`) for the dataset card; unknown for a local path."""
        from synthface.weights import licence

        return licence(self.name)

    @property
    def takes_poses(self) -> bool:
        """Whether this generator has pose control (`poses=` in `__call__`)."""
        return self.family.takes_poses(self.pipeline)

    def require_poses(self, who: str) -> None:
        """InvalidInputError, starting with `who` (who asks for poses), unless the generator has pose control."""
        if not self.takes_poses:
            raise InvalidInputError(
                f"{who} renders with a {self.family.name!r} generator that has no pose control, so it cannot "
                "follow target poses. Use a generator with a pose model ('vec2face-plus-pose'; "
                "'vec2face-plus-tiny' for plumbing tests), or remove the poses (variation.pose)."
            )

    def __call__(self, conditions: np.ndarray, seeds: Sequence[int], poses: np.ndarray | None = None) -> list[np.ndarray]:
        """Image i from conditions[i], seeds[i] and, when given, poses[i] ((B, 2) target yaw, pitch in
        degrees; only for a generator with pose control, see `require_poses`)."""
        kwargs = self.family.call_kwargs(self.pipeline, self.settings)
        if poses is not None:
            self.require_poses("This render call")
            kwargs["poses"] = torch.from_numpy(np.ascontiguousarray(poses, dtype=np.float32))
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


def build_renderer(
    model: str | os.PathLike | Any,
    *,
    settings: RenderSettings | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    optimizations: Optimizations | None = None,
    allow_download: bool = False,
    allow_pickle: bool | None = None,
    name: str | None = None,
    **load_options,
) -> Renderer:
    """A `Renderer` for a model name (loaded through its family) or a pipeline object (used in place).

    For a name: device None means "auto" (`resolve_device`), dtype None means fp32, optimizations
    None means `Optimizations()`; `load_options` go to the family's `load` (Arc2Face: base,
    lcm_lora). For a pipeline: device and dtype None keep the pipeline's own (else it is moved),
    optimizations None leaves it as it is. `name` is what the licence is looked up under (default:
    the model as given; for a pipeline, its family's name).
    The same model, settings, device, dtype and optimizations give byte-identical images either way.

    Raises InvalidInputError for an unknown device, dtype or pipeline type, or options the family's
    loader does not take; ModelNotFoundError (from the family) when the weights are not available.
    """
    from synthface.devices import resolve_device

    settings = settings or RenderSettings()
    if isinstance(model, (str, os.PathLike)):
        family = family_for(model)
        target = resolve_device(device)
        try:
            pipeline = family.load(os.fspath(model), device=target, dtype=resolve_dtype(dtype or "fp32", target),
                                   allow_download=allow_download, allow_pickle=allow_pickle, **load_options)
        except TypeError as exc:
            if not load_options:
                raise
            raise InvalidInputError(
                f"The {family.name!r} generator family does not take the option(s) {', '.join(sorted(load_options))} "
                f"({exc}). Remove them, or use a model of a family that takes them."
            ) from None
        name, optimizations = name or os.fspath(model), optimizations or Optimizations()
    else:
        if load_options:
            raise InvalidInputError(
                f"Loading options {', '.join(sorted(load_options))} apply to a model name, not to a pipeline object."
            )
        family = family_of_pipeline(model)
        pipeline = model
        if device is not None:
            pipeline.to(resolve_device(device))
        if dtype is not None:
            pipeline.to(dtype=resolve_dtype(dtype, pipeline.device))
        name = name or family.name
    pipeline.set_progress_bar_config(disable=True)
    family.call_kwargs(pipeline, settings)  # settings the model cannot honour are refused before any work
    if optimizations is not None:
        family.optimize(pipeline, optimizations)
    return Renderer(pipeline=pipeline, family=family, name=name, settings=settings)


class Vec2FaceFamily(GeneratorFamily):
    """Vec2Face and Vec2Face+ (`synthface.pipelines.Vec2FacePipeline`): one forward pass from an ID
    vector to a 112 x 112 face.

    Names: "vec2face", "vec2face-plus", "vec2face-plus-pose" (the published files), "vec2face-tiny",
    "vec2face-plus-tiny" (random weights, plumbing only), and any local path it `claims`.
    There is no denoising, so `RenderSettings.steps` and `guidance` do not apply and are ignored;
    `resolution` must be None or 112 (the model's only size). Each image draws its mask rate and
    token noise from its own generator (`rng="per_image"`, the generation scripts' mask preset).
    uint8 images are truncated, ((x + 1) / 2 * 255) clipped then cut to an integer, as the published
    scripts write them (HSFace was made so), not rounded as Arc2Face's are.
    Attention: "exact" (the published arithmetic, the default) or "sdpa"; no VAE, so no
    vae_slicing; channels_last applies to the CNN decoder.
    """

    name = "vec2face"
    models = ("vec2face", "vec2face-plus", "vec2face-plus-pose", "vec2face-tiny", "vec2face-plus-tiny")
    sampler_settings = ()  # one forward pass: no steps, no guidance
    resolution = 112

    def load(self, model, *, device, dtype, allow_download, allow_pickle, pose=False, merge_lora=False):
        """`load_vec2face`; `pose` reads Vec2Face+'s pose checkpoint from its Hugging Face folder,
        `merge_lora` folds the LoRA adapters into the attention weights."""
        from synthface.pipelines import load_vec2face
        from synthface.pipelines.loading import VEC2FACE_TINY

        if model in VEC2FACE_TINY:
            torch.set_num_threads(1)  # as Arc2Face's tiny model: layers too small to gain from threads
        return load_vec2face(model, device=device, dtype=dtype, allow_download=allow_download,
                             allow_pickle=allow_pickle, pose=pose, merge_lora=merge_lora)

    def accepts(self, pipeline) -> bool:
        from synthface.pipelines import Vec2FacePipeline

        return isinstance(pipeline, Vec2FacePipeline)

    def claims(self, path: str) -> bool:
        """A .pth file, a folder in the published Hugging Face layout, or a converted folder whose
        model_index.json names Vec2FacePipeline."""
        import json
        from pathlib import Path

        from synthface.pipelines.loading import VEC2FACE_LAYOUT

        folder = Path(path)
        if folder.is_file():
            return folder.suffix == ".pth"
        if any((folder / file).is_file() for file in VEC2FACE_LAYOUT.values()):
            return True
        try:
            return json.loads((folder / "model_index.json").read_text()).get("_class_name") == "Vec2FacePipeline"
        except (OSError, ValueError, AttributeError):
            return False

    def optimize(self, pipeline, optimizations):
        if optimizations.vae_slicing:
            raise InvalidInputError("Vec2Face has no VAE, so vae_slicing does not apply; leave it off.")
        pipeline.optimize(attention=optimizations.attention or "exact", compile=optimizations.compile)
        layout = torch.channels_last if optimizations.channels_last else torch.contiguous_format
        pipeline.vec2face.im_decoder.to(memory_format=layout)

    def call_kwargs(self, pipeline, settings):
        if settings.resolution not in (None, self.resolution):
            raise InvalidInputError(
                f"Vec2Face renders {self.resolution} x {self.resolution} images only, got resolution "
                f"{settings.resolution}; leave the resolution unset (or {self.resolution})."
            )
        return {"rng": "per_image"}

    def native_resolution(self, pipeline) -> int:
        return self.resolution

    def takes_poses(self, pipeline) -> bool:
        """Vec2Face+ loaded with its pose model ("vec2face-plus-pose", "vec2face-plus-tiny"); with poses
        the pipeline uses the published pose-control mask preset (`MASK_RATIOS["pose"]`)."""
        return pipeline.pose_model is not None

    def to_uint8(self, images: torch.Tensor) -> list[np.ndarray]:
        """Truncation, as the published scripts write: the same bytes as
        `synthface.pipelines.vec2face.to_uint8` of the decoder output (output_type="pil")."""
        pixels = images.float().mul(255).clamp(0, 255).to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


for _name in ("arc2face", "foivospar/arc2face", "tiny"):
    register_generator(_name, DEFAULT_FAMILY)
register_generator("vec2face*", Vec2FaceFamily())
