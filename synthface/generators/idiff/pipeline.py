"""IDiff-Face, UIFace, IDperturb and NegFaceDiff sampling as one diffusers pipeline.

An identity is one L2-normalised 512-d ElasticFace-Arc embedding (not Arc2Face's ArcFace). The
denoiser is `IDiffUNet` on 3x32x32 latents of the LDM VQ-f4 autoencoder (diffusers `VQModel`);
images are decoded with quantisation, clamped, mapped to [0, 1] and resized to 112x112, as the
published scripts write them. Samplers (`sampler=`):

- "cfg": DDIM (`IDiffDDIMScheduler`, the published rule) with plain classifier-free guidance, as
  IDperturb samples: eps = (1 + s) eps(c) - s eps_empty with s = guidance_scale - 1 (the original
  `cfg_scale`, 1.0 published, i.e. guidance_scale 2). Both passes run as one forward of 2B rows.
- "uiface": UIFace's two-stage DDIM (`two_stage`): empty context until each image's attention map
  settles below `mse_threshold`, attention injection, guided stage 2 below `stage_threshold`.
- "ddpm": IDiff-Face's 1000-step DDPM (`IDiffDDPMScheduler`), unguided by default (guidance_scale 1).
- Negative guidance (NegFaceDiff), with `negative_embeds`, for "cfg" and "ddpm": the negative takes
  the empty context's place, eps = (1 + w) eps(c) - w eps(c_neg), optionally w_t = w (1 - t/T).
  `synthface.identity.negatives` picks each identity's negative from a bank.

Randomness: `rng="per_image"` (the engine's mode) draws image i's starting noise, and any later
noise (DDPM steps, DDIM eta), from `generator[i]` alone, so an image never depends on its
batch-mates; `rng="reference"` replays the published scripts: everything from torch's global CPU
generator in their order, the first draw being torch.randn(N, 3, 32, 32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, VQModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput

from synthface.checks import check_int, check_real, first_line
from synthface.errors import DeviceMemoryError, InvalidInputError, ModelNotFoundError
from synthface.generators._checks import CheckedPipelineMixin, check_id_embeds
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler, IDiffDDPMScheduler, draw_noise
from synthface.generators.idiff.two_stage import TwoStageSampler, check_stage_threshold

SAMPLERS = ("cfg", "uiface", "ddpm")
RNG_MODES = ("per_image", "reference")
OUTPUT_TYPES = ("pt", "latent", "np", "pil")
#: The latent side of the published models (128x128 faces through VQ-f4).
LATENT_SIZE = 32
#: The side of the images the published scripts write (bilinear 128 -> 112).
IMAGE_SIZE = 112
#: Published defaults: DDIM steps, guidance (cfg_scale 1 + 1), UIFace's thresholds, NegFaceDiff's w.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = {"cfg": 2.0, "uiface": 2.0, "ddpm": 1.0}
DEFAULT_NEGATIVE_SCALE = 0.5
#: Largest guidance or negative weight accepted: far past any published setting (2 and 0.5-1).
MAX_GUIDANCE_SCALE = 100.0


@dataclass
class IDiffFacePipelineOutput(BaseOutput):
    """Output of `IDiffFacePipeline`.

    Args:
        images: N images in id_embeds' order: an (N, 3, 112, 112) float32 tensor in [0, 1] ("pt"),
            (N, 112, 112, 3) float32 array ("np"), PIL images ("pil", uint8 rounded as torchvision's
            save_image), or the sampler's (N, 3, 32, 32) float32 latents ("latent").
        id_embeds: the (N, 512) unit identity embeddings used, float32.
        partition_distances: "uiface" only: (S1 - 1, N), each stage-1 step's map distance after the
            first (the quantity compared with mse_threshold); None for the other samplers.
        switched_at: "uiface" only: (N,) int64, the timestep at which each image's distance first fell
            below mse_threshold (its identity is used from the next step on), -1 if never.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    id_embeds: torch.Tensor
    partition_distances: torch.Tensor | None = None
    switched_at: torch.Tensor | None = None


class IDiffFacePipeline(CheckedPipelineMixin, DiffusionPipeline):
    """Identity-conditioned latent diffusion of the IDiff-Face family (IDiff-Face, UIFace, IDperturb,
    NegFaceDiff).

    Args:
        unet: the epsilon model (`IDiffUNet`; learned empty context for UIFace/IDperturb, zero for
            IDiff-Face/NegFaceDiff).
        vqvae: the LDM VQ-f4 first stage as a diffusers `VQModel` (only its decoder and codebook
            are used).
        scheduler: `IDiffDDIMScheduler` or `IDiffDDPMScheduler`; the sampler that needs the other
            builds it from this one's config.
        latent_size: the latent side the sampler starts from (32 for the published models).
    """

    model_cpu_offload_seq = "unet->vqvae"
    _callback_tensor_inputs = ["latents"]
    _optional_components: list[str] = []

    def __init__(self, unet, vqvae: VQModel, scheduler: IDiffDDIMScheduler | IDiffDDPMScheduler,
                 latent_size: int = LATENT_SIZE):
        super().__init__()
        if not isinstance(scheduler, (IDiffDDIMScheduler, IDiffDDPMScheduler)):
            raise InvalidInputError(
                f"IDiffFacePipeline needs an IDiffDDIMScheduler or IDiffDDPMScheduler, got {type(scheduler).__name__}: "
                "stock diffusers DDIM/DDPM schedulers differ from the published samplers (IDIFF.md). Pass "
                "IDiffDDIMScheduler() (or IDiffDDIMScheduler.from_config(scheduler.config))."
            )
        check_int("latent_size", latent_size, 1, None)
        self.register_modules(unet=unet, vqvae=vqvae, scheduler=scheduler)
        self.register_to_config(latent_size=latent_size)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A pipeline folder written by `save_pretrained` (safetensors weights, model_index.json naming
        IDiffFacePipeline); `kwargs` go to diffusers' `from_pretrained` (torch_dtype, ...).

        Raises:
            ModelNotFoundError: no such folder, or one that is not an IDiffFacePipeline folder; for the
                published checkpoints use `synthface.pipelines.load_idiff`.
        """
        folder = Path(str(pretrained_model_name_or_path)).expanduser()
        index = folder / "model_index.json"
        if not index.is_file():
            raise ModelNotFoundError(
                f"Cannot load an IDiffFacePipeline from {folder}: it holds no model_index.json. Pass a folder written "
                "by IDiffFacePipeline.save_pretrained or `synthface models convert`, or load the published "
                "checkpoints with synthface.pipelines.load_idiff."
            )
        import json

        named = json.loads(index.read_text()).get("_class_name")
        if named != cls.__name__:
            raise ModelNotFoundError(
                f"{index} names {named!r}, not {cls.__name__}; pass a folder written by {cls.__name__}.save_pretrained."
            )
        if kwargs.get("use_safetensors") is False:
            raise InvalidInputError(
                "IDiffFacePipeline folders are read as safetensors only (pickled weights can run code when loaded); "
                "drop use_safetensors=False, or convert pickled checkpoints with load_idiff's allow_pickle opt-in."
            )
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"Cannot load an IDiffFacePipeline from {folder}: {first_line(exc)}. Write the folder again with "
                "save_pretrained (or `synthface models convert`)."
            ) from None

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        id_embeds: torch.Tensor | np.ndarray,
        sampler: str = "cfg",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        mse_threshold: float = 0.006,
        stage_threshold: int = 500,
        negative_embeds: torch.Tensor | np.ndarray | None = None,
        negative_scale: float | None = None,
        adaptive_negative: bool = False,
        eta: float = 0.0,
        rng: str = "per_image",
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        return_dict: bool = True,
    ) -> IDiffFacePipelineOutput | tuple:
        """Sample one image per identity.

        Args:
            id_embeds: (N, 512) ElasticFace-Arc identity embeddings (a 1-D vector is one identity);
                rows are L2-normalised (with a warning when they were not unit-norm).
            sampler: "cfg" (DDIM + classifier-free guidance: IDperturb, or UIFace/IDperturb configs
                without the two stages), "uiface" (UIFace's two-stage sampler) or "ddpm" (IDiff-Face's
                1000-step DDPM); module docstring.
            num_inference_steps: DDIM steps, 1 to 1000 (None: 50, the published setting); DDIM visits
                ceil(1000 / (1000 // steps)) timesteps. "ddpm" always runs all 1000 (None or 1000).
            guidance_scale: diffusers' g in eps_u + g (eps_c - eps_u), the original cfg_scale + 1, a
                finite number from 0 to `MAX_GUIDANCE_SCALE`. None: the published 2.0 for "cfg" and
                "uiface" (cfg_scale 1; in UIFace's stage 2 only), 1.0 (unguided) for "ddpm". With
                `negative_embeds`, the negative replaces the empty context and g = 1 + w.
            mse_threshold: "uiface": the switch threshold on the attention-map distance (a mean
                absolute difference of [0, 1] maps), greater than 0 and at most 1; published 0.006.
            stage_threshold: "uiface": stage 1 is every timestep >= this (0 to 999, published 500); it
                must leave at least one stage-1 step.
            negative_embeds: NegFaceDiff's negative identities, "cfg" and "ddpm" only: (N, 512), one per
                identity, or one (512,) vector for all. Non-zero rows are L2-normalised; a zero row is
                kept as NegFaceDiff's "empty" negative (a zero context, i.e. the projection's bias).
                `synthface.identity.negatives.negative_embeddings` picks them from a bank (far / close / mid).
            negative_scale: NegFaceDiff's w, finite, 0 to `MAX_GUIDANCE_SCALE`: eps = (1 + w) eps(c) -
                w eps(c_neg). None: guidance_scale - 1 if guidance_scale is given, else 0.5 (README).
            adaptive_negative: AdaptDiff's schedule w_t = w (1 - t / 1000) instead of a constant w.
            eta: DDIM's eta, 0 (every published path) to 1; must be 0 for "ddpm".
            rng: "per_image" or "reference" (module docstring). "reference" takes no generator: seed
                with torch.manual_seed(s) right before the call, as the published scripts do.
            generator: "per_image": a list of N `torch.Generator`s (image i draws only from the i-th:
                batch-independent), or one generator / None (torch's global generator) for the whole
                batch.
            output_type: "pt", "np", "pil" or "latent" (see `IDiffFacePipelineOutput`).
            callback_on_step_end: called after every step as `fn(pipe, step, timestep, tensors)` with the
                tensors named in `callback_on_step_end_tensor_inputs` ("latents"); may return a dict
                replacing some of them with tensors of the same shape.
            callback_on_step_end_tensor_inputs: names from `_callback_tensor_inputs`.
            return_dict: return an `IDiffFacePipelineOutput` rather than the tuple (images, id_embeds).

        Raises:
            InvalidInputError: any argument `check_inputs` refuses (context width, thresholds, steps,
                guidance, generators, sampler names, negatives, callbacks, output type).
            DeviceMemoryError: the GPU ran out of memory; the message suggests a batch size.
        """
        # 1. Check inputs: anything non-finite or out of range is refused before any work or draw.
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        settings = self.check_inputs(
            id_embeds, sampler, num_inference_steps, guidance_scale, mse_threshold, stage_threshold,
            negative_embeds, negative_scale, adaptive_negative, eta, rng, generator, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        unit = settings["id_embeds"]
        try:
            latents, record = self._sample(settings, generator, callback_on_step_end,
                                           list(callback_on_step_end_tensor_inputs))
            # 6. Decode (or return the latents).
            images = latents.cpu() if output_type == "latent" else postprocess(self.decode(latents), output_type)
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceMemoryError(_oom_message(unit.shape[0], self.unet.dtype, exc)) from None
        finally:
            self.maybe_free_model_hooks()
        # 7. Output.
        if not return_dict:
            return images, unit
        distances, switched = record if record is not None else (None, None)
        return IDiffFacePipelineOutput(images=images, id_embeds=unit, partition_distances=distances,
                                       switched_at=switched)

    def _sample(self, settings: dict, generator, callback, tensor_inputs: list[str]):
        device, dtype = self._execution_device, self.unet.dtype
        sampler, unit = settings["sampler"], settings["id_embeds"]
        batch, side = unit.shape[0], self.config.latent_size
        context = unit.to(device, dtype)
        # 2. The scheduler and its timesteps.
        scheduler = self.scheduler_for(sampler)
        scheduler.set_timesteps(settings["num_inference_steps"], device="cpu")
        timesteps = [int(t) for t in scheduler.timesteps]
        # 3. Starting noise: the first draw, from the global generator ("reference") or per image.
        latents = draw_noise((batch, self.unet.config.in_channels, side, side), generator, device)
        # 4. The eps of one step for this sampler.
        two_stage = None
        if sampler == "uiface":
            two_stage = TwoStageSampler(self.unet, context, settings["guidance_scale"], settings["mse_threshold"],
                                        settings["stage_threshold"], side)
            eps_at = two_stage.eps
        else:
            negative = settings["negative_embeds"]
            negative = None if negative is None else negative.to(device, dtype)
            eps_at = self._guided(context, negative, settings)
        step_kwargs = {"generator": generator}
        if sampler != "ddpm":
            step_kwargs["eta"] = settings["eta"]
        # 5. Denoising loop.
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                eps = eps_at(latents.to(dtype), t)
                latents = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)[0]
                if callback is not None:
                    local = {"latents": latents}
                    returned = _checked_callback_result(callback, callback(self, i, t, {k: local[k] for k in tensor_inputs}),
                                                        local)
                    latents = returned.get("latents", latents).to(device, torch.float32)
                progress.update()
        return latents, (two_stage.record() if two_stage is not None else None)

    def _guided(self, context: torch.Tensor, negative: torch.Tensor | None, settings: dict) -> Callable:
        """eps(latents, t) for "cfg"/"ddpm": conditional alone (g = 1 or w = 0), or the conditional and
        the empty (or negative) pass batched into one forward of 2B rows, conditional rows first."""
        unet = self.unet
        batch = context.shape[0]
        total = self.scheduler.config.num_train_timesteps
        if negative is not None:
            w, adaptive = settings["negative_scale"], settings["adaptive_negative"]

            def eps_negative(latents, t):
                weight = w * (1 - t / total) if adaptive else w
                if weight == 0:
                    return unet(latents, t, context).float()
                eps_c, eps_n = unet(torch.cat([latents, latents]), t, torch.cat([context, negative])).float().chunk(2)
                return (1 + weight) * eps_c - weight * eps_n

            return eps_negative
        s = settings["guidance_scale"] - 1.0
        if s == 0:
            return lambda latents, t: unet(latents, t, context).float()
        empty = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(context.device)

        def eps_cfg(latents, t):
            eps_c, eps_u = unet(torch.cat([latents, latents]), t, torch.cat([context, context]), empty=empty).float().chunk(2)
            return (1 + s) * eps_c - s * eps_u

        return eps_cfg

    def scheduler_for(self, sampler: str) -> IDiffDDIMScheduler | IDiffDDPMScheduler:
        """The registered scheduler when it is the kind `sampler` needs (DDPM for "ddpm", DDIM
        otherwise), else that kind built from its config (same schedule)."""
        kind = IDiffDDPMScheduler if sampler == "ddpm" else IDiffDDIMScheduler
        return self.scheduler if isinstance(self.scheduler, kind) else kind.from_config(self.scheduler.config)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) float32 in [0, 1] on the CPU, as the published scripts write: VQ decode with
        quantisation, clamp to [-1, 1], (x + 1) / 2, bilinear resize to 112 (align_corners False,
        no antialias)."""
        from synthface.generators.idiff.autoencoder import decode_latents

        raw = decode_latents(self.vqvae, latents.to(self.vqvae.dtype)).float()
        unit = (raw.clamp(-1, 1) + 1) / 2
        return F.interpolate(unit, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                             antialias=False).cpu()

    # ------------------------------------------------------------------ input checks

    def check_inputs(self, id_embeds, sampler, num_inference_steps, guidance_scale, mse_threshold, stage_threshold,
                     negative_embeds, negative_scale, adaptive_negative, eta, rng, generator, output_type,
                     callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)) -> dict:
        """Refuse every argument that would fail late or sample something silently wrong; draws nothing.

        Returns the resolved settings: id_embeds (N, 512) unit float32, sampler, num_inference_steps,
        guidance_scale, mse_threshold, stage_threshold, negative_embeds ((N, 512) or None),
        negative_scale, adaptive_negative, eta.

        Raises:
            InvalidInputError: naming the argument, the value received and what is accepted.
        """
        if sampler not in SAMPLERS:
            raise InvalidInputError(
                f"sampler must be one of {SAMPLERS}, got {sampler!r}: 'cfg' is DDIM with classifier-free guidance "
                "(IDperturb), 'uiface' UIFace's two-stage sampler, 'ddpm' IDiff-Face's 1000-step DDPM; negative "
                "guidance (NegFaceDiff) is negative_embeds= with 'cfg' or 'ddpm'."
            )
        width = self.unet.config.context_dim
        shape = tuple(getattr(id_embeds, "shape", ()))
        if isinstance(id_embeds, (torch.Tensor, np.ndarray)) and (len(shape) not in (1, 2) or shape[-1] != width):
            raise InvalidInputError(
                f"id_embeds has shape {shape}; expected (N, {width}): one L2-normalised {width}-d ElasticFace-Arc R100 "
                "embedding per identity, the IDiff-Face family's conditioning space (not Arc2Face's ArcFace). Embed "
                "faces with the family's recogniser, or pass the bank's vectors."
            )
        unit = check_id_embeds(id_embeds, width)
        n = unit.shape[0]
        total = self.scheduler.config.num_train_timesteps
        if sampler == "ddpm":
            if num_inference_steps not in (None, total) or isinstance(num_inference_steps, bool):
                raise InvalidInputError(
                    f"sampler='ddpm' runs all {total} steps of IDiff-Face's DDPM, got num_inference_steps="
                    f"{num_inference_steps!r}; pass None (or {total}), or use sampler='cfg' for fewer DDIM steps."
                )
            steps = total
        else:
            steps = DEFAULT_STEPS if num_inference_steps is None else num_inference_steps
            check_int("num_inference_steps", steps, 1, total, why=f"DDIM steps of the {total}-step schedule; "
                      "the published setting is 50")
        if guidance_scale is not None:
            check_real("guidance_scale", guidance_scale, 0.0, MAX_GUIDANCE_SCALE,
                       why="diffusers' scale = the original cfg_scale + 1; the published 2.0 is cfg_scale 1")
        check_real("mse_threshold", mse_threshold, 0.0, 1.0,
                   why="UIFace's switch threshold on a mean absolute difference of [0, 1] maps; published 0.006")
        if mse_threshold <= 0:
            raise InvalidInputError(
                f"mse_threshold must be greater than 0, got {mse_threshold!r}: the distance is never below 0, so no "
                "image would ever switch to its identity in UIFace's stage 1. Use the published 0.006."
            )
        # Unused outside "uiface", where the schedule bounds it; elsewhere the published schedule's range.
        check_int("stage_threshold", stage_threshold, 0, total - 1 if sampler == "uiface" else max(total, 1000) - 1,
                  why="the timestep where UIFace's stage 2 begins; published 500")
        check_real("eta", eta, 0.0, 1.0, why="DDIM's eta mixes in fresh noise, 0 (deterministic, published) to 1")
        if sampler == "ddpm" and eta != 0:
            raise InvalidInputError(
                f"eta={eta!r} applies to DDIM only; sampler='ddpm' adds its own noise at every step. Pass eta=0, or "
                "use sampler='cfg'."
            )
        if sampler == "uiface":
            check_stage_threshold(IDiffDDIMScheduler.timestep_list(steps, total), stage_threshold, steps)
        negative, w = self._check_negative(sampler, n, negative_embeds, negative_scale, adaptive_negative,
                                           guidance_scale)
        guidance = DEFAULT_GUIDANCE[sampler] if guidance_scale is None else float(guidance_scale)
        self._check_rng(rng, generator, n)
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        _check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        return dict(id_embeds=unit, sampler=sampler, num_inference_steps=steps, guidance_scale=guidance,
                    mse_threshold=float(mse_threshold), stage_threshold=int(stage_threshold), negative_embeds=negative,
                    negative_scale=w, adaptive_negative=bool(adaptive_negative), eta=float(eta))

    def _check_negative(self, sampler, n, negative_embeds, negative_scale, adaptive_negative, guidance_scale):
        if not isinstance(adaptive_negative, bool):
            raise InvalidInputError(f"adaptive_negative must be True or False, got {adaptive_negative!r}.")
        if negative_embeds is None:
            if negative_scale is not None or adaptive_negative:
                raise InvalidInputError(
                    "negative_scale and adaptive_negative weight NegFaceDiff's negative guidance, but no "
                    "negative_embeds were given; pass negative_embeds (see synthface.identity.negatives) "
                    "or drop them."
                )
            return None, None
        if sampler == "uiface":
            raise InvalidInputError(
                "negative_embeds (NegFaceDiff's guidance) apply to sampler='cfg' or 'ddpm'; UIFace's two-stage "
                "sampler has its own empty-context guidance. Drop negative_embeds or change the sampler."
            )
        negative = _check_negative_embeds(negative_embeds, n, self.unet.config.context_dim)
        if negative_scale is not None:
            check_real("negative_scale", negative_scale, 0.0, MAX_GUIDANCE_SCALE,
                       why="NegFaceDiff's w in (1 + w) eps(c) - w eps(c_neg); its README uses 0.5")
            w = float(negative_scale)
            if guidance_scale is not None and not math.isclose(float(guidance_scale), 1 + w):
                raise InvalidInputError(
                    f"With negative_embeds the negative replaces the empty context, so guidance_scale ({guidance_scale!r})"
                    f" and negative_scale ({negative_scale!r}) name the same weight (g = 1 + w); pass only one."
                )
        else:
            w = DEFAULT_NEGATIVE_SCALE if guidance_scale is None else float(guidance_scale) - 1.0
            if w < 0:
                raise InvalidInputError(
                    f"With negative_embeds, guidance_scale {guidance_scale!r} means a negative weight w = g - 1 = {w:g}, "
                    "which pulls images towards the negative identity; pass guidance_scale >= 1 or negative_scale "
                    "(NegFaceDiff uses w = 0.5)."
                )
        return negative, w

    @staticmethod
    def _check_rng(rng, generator, n: int) -> None:
        if rng not in RNG_MODES:
            raise InvalidInputError(f"rng must be one of {RNG_MODES}, got {rng!r}.")
        if rng == "reference" and generator is not None:
            raise InvalidInputError(
                "rng='reference' replays the published scripts' draws from torch's global generator, so it takes no "
                "generator; call torch.manual_seed(s) right before the call, or use rng='per_image' with one "
                "generator per image."
            )
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise InvalidInputError(
                    f"Got {len(generator)} generators for {n} identities; pass one generator per image (in id_embeds' "
                    "order), a single generator, or None."
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise InvalidInputError("generator must be a torch.Generator, a list of them, or None.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidInputError(
                f"generator must be a torch.Generator, a list of them, or None; got {type(generator).__name__}."
            )


def _check_negative_embeds(negative_embeds, n: int, dim: int) -> torch.Tensor:
    """(n, dim) float32: finite rows, non-zero ones normalised, zero rows kept (NegFaceDiff's "empty")."""
    if isinstance(negative_embeds, np.ndarray):
        x = torch.from_numpy(np.asarray(negative_embeds))
    elif isinstance(negative_embeds, torch.Tensor):
        x = negative_embeds.detach()
    else:
        raise InvalidInputError(
            f"negative_embeds must be a torch.Tensor or numpy array of shape ({n}, {dim}) or ({dim},), got "
            f"{type(negative_embeds).__name__}."
        )
    x = x.to("cpu", torch.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] not in (1, n):
        raise InvalidInputError(
            f"negative_embeds has shape {tuple(x.shape)}; expected ({n}, {dim}) (one negative identity per "
            f"identity) or ({dim},) (one for all), in the same {dim}-d embedding space as id_embeds."
        )
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError("negative_embeds contain NaN or inf; every value must be finite.")
    norms = x.norm(dim=1, keepdim=True)
    x = torch.where(norms > 0, x / norms.clamp_min(1e-300), x)
    return x.expand(n, dim).to(torch.float32).contiguous()


def postprocess(images: torch.Tensor, output_type: str):
    """(N, 3, H, W) float32 in [0, 1] -> the tensor ("pt"), an (N, H, W, 3) array ("np"), or PIL images
    ("pil": uint8 as torchvision's save_image rounds, trunc(x * 255 + 0.5) clamped)."""
    if output_type == "pt":
        return images
    if output_type == "np":
        return images.permute(0, 2, 3, 1).numpy()
    return [PIL.Image.fromarray(a) for a in to_uint8(images)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded as torchvision's save_image writes PNGs."""
    return (images * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _check_callback(fn, tensor_inputs, allowed) -> None:
    if fn is not None and not callable(fn):
        raise InvalidInputError(
            f"callback_on_step_end must be a function called after each denoising step (or None), got {fn!r:.60} "
            f"({type(fn).__name__}). Pass the function itself, e.g. callback_on_step_end=my_function."
        )
    if isinstance(tensor_inputs, str):
        raise InvalidInputError(
            f"callback_on_step_end_tensor_inputs must be a list of tensor names, got the string {tensor_inputs!r}; "
            f"pass [{tensor_inputs!r}]."
        )
    unknown = [name for name in tensor_inputs if name not in allowed]
    if unknown:
        raise InvalidInputError(f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from {allowed}.")


def _checked_callback_result(fn, returned, given: dict) -> dict:
    """None (nothing replaced) or a dict replacing some tracked tensors by tensors of the same shape."""
    who = getattr(fn, "__qualname__", type(fn).__name__)
    if returned is None:
        return {}
    if not isinstance(returned, dict):
        raise InvalidInputError(
            f"callback_on_step_end {who} returned {returned!r:.60} ({type(returned).__name__}); it must return None "
            "or a dict of the tensors it replaces, e.g. {'latents': latents}."
        )
    for name, value in returned.items():
        if name in given and (not isinstance(value, torch.Tensor) or value.shape != given[name].shape):
            found = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidInputError(
                f"callback_on_step_end {who} returned {name!r} as {found}; a replacement must be a tensor of the "
                f"shape it was given, {tuple(given[name].shape)}."
            )
    return returned


def _oom_message(batch: int, dtype: torch.dtype, exc: Exception) -> str:
    smaller = max(1, batch // 2)
    return (
        f"The GPU ran out of memory sampling {batch} IDiff-Face images in {dtype} at once. Sample fewer images per "
        f"call (try a batch of {smaller} or less, e.g. `--batch-size {smaller}`) or use bf16/fp16. "
        f"(CUDA said: {str(exc).splitlines()[0] if str(exc) else 'out of memory'})"
    )
