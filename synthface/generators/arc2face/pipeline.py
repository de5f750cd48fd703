"""Arc2Face as a batched diffusers pipeline: many identities per call, one generator per image.

Stable Diffusion 1.5 with Arc2Face's fine-tuned UNet and CLIP text encoder. An identity is a unit
512-d ArcFace vector; it conditions the UNet through the text encoder (see `id_encoder`), and the
unconditional branch of classifier-free guidance is the same encoder on the empty prompt.
Components are stock diffusers/transformers classes, so `save_pretrained`/`from_pretrained`,
`.to()`, offload, LoRA and attention backends behave as in any diffusers pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from synthface.checks import check_int, check_real
from synthface.errors import DeviceMemoryError, InvalidInputError, ModelNotFoundError
from synthface.generators._checks import CheckedPipelineMixin, check_id_embeds
from synthface.generators.arc2face import id_encoder

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: Largest output side accepted, in pixels (4x Arc2Face's native 512; as a recipe's `resolution`).
MAX_IMAGE_SIDE = 2048
#: Largest guidance accepted: far past any useful setting (Arc2Face uses 3.0, its demo offers
#: 0.1-10); infinite guidance renders black images and NaN silently turns guidance off.
MAX_GUIDANCE_SCALE = 100.0
#: Denoising-step bound for a scheduler whose config names no training timesteps (SD 1.5's count).
MAX_TRAIN_TIMESTEPS = 1000


def default_scheduler(config) -> DPMSolverMultistepScheduler:
    """Arc2Face's sampler: DPM-Solver++ (2M) on the SD 1.5 noise schedule given by `config`."""
    return DPMSolverMultistepScheduler.from_config(config)


@dataclass
class Arc2FacePipelineOutput(BaseOutput):
    """Output of `Arc2FacePipeline`.

    Args:
        images: N*K images in identity-major order (all K images of identity 0 first): a list of
            PIL images, an (N*K, H, W, 3) float array in [0, 1], an (N*K, 3, H, W) tensor in
            [0, 1], or latents, depending on `output_type`.
        id_embeds: the (N, D) unit ID vectors actually used (after normalisation), float32.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    id_embeds: torch.Tensor


class Arc2FacePipeline(CheckedPipelineMixin, DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Identity-conditioned face generation with Arc2Face (Papantoniou et al., ECCV 2024).

    Args:
        vae: `AutoencoderKL` (stock SD 1.5).
        text_encoder: `CLIPTextModel` fine-tuned by Arc2Face (its `encoder/` subfolder).
        tokenizer: `CLIPTokenizer` (stock SD 1.5).
        unet: `UNet2DConditionModel` fine-tuned by Arc2Face (its `arc2face/` subfolder).
        scheduler: any diffusers scheduler; Arc2Face uses `DPMSolverMultistepScheduler`.
        id_dim: width of the ID vectors (512 for ArcFace).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]
    _optional_components: list[str] = []

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, id_dim: int = 512):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(id_dim=id_dim)
        hidden = text_encoder.config.hidden_size
        if id_dim > hidden:
            raise InvalidInputError(f"id_dim {id_dim} exceeds the text encoder's hidden size {hidden}.")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, allow_pickle: bool | None = None, **kwargs):
        """diffusers' `from_pretrained`, reading safetensors only unless pickled weights are opted in.

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained`, or a repo id.
            allow_pickle: also read pickled `*.bin` components (with torch's weights_only loader);
                SYNTHFACE_ALLOW_PICKLE=1 opts in as well (`synthface.weights.pickle_allowed`).
            **kwargs: passed to `DiffusionPipeline.from_pretrained` (dtype, device_map, ...).

        Raises:
            ModelNotFoundError: a component exists only pickled and nothing opted in, or the
                weights cannot be found or read; the message names the files and the fix.
        """
        from synthface.weights import pickle_allowed, pickle_refusal, pickled_only

        source = str(pretrained_model_name_or_path)
        folder = Path(source).expanduser()
        if not folder.exists() and (source.count("/") != 1 or source.startswith((".", "/", "~"))):
            raise ModelNotFoundError(
                f"Cannot load an {cls.__name__} from {source}: no such folder, and it is not a repo id "
                "(owner/name). Pass a folder written by save_pretrained."
            )
        allowed = pickle_allowed(allow_pickle)
        if not allowed:
            if kwargs.get("use_safetensors") is False:
                raise InvalidInputError(
                    "use_safetensors=False asks for pickled weights, which can run code when loaded; "
                    "opt in with allow_pickle=True or SYNTHFACE_ALLOW_PICKLE=1, or drop the argument."
                )
            kwargs["use_safetensors"] = True
            pickled = [p for part in sorted(folder.iterdir()) if part.is_dir() for p in pickled_only(part)] \
                if folder.is_dir() else []
            if pickled:
                raise pickle_refusal(f"pipeline in {folder}", [p.relative_to(folder) for p in pickled])
        try:
            return super().from_pretrained(str(folder) if folder.exists() else source, **kwargs)
        except OSError as exc:
            hint = "" if allowed else " Only safetensors load without an opt-in (allow_pickle=True or SYNTHFACE_ALLOW_PICKLE=1)."
            raise ModelNotFoundError(
                f"Cannot load an {cls.__name__} from {source}: {_first_line(exc)}. Pass a folder written by "
                f"save_pretrained, or use synthface.pipelines.load_arc2face (synthface.generators.arc2face.loading) for the published Arc2Face layout.{hint}"
            ) from None

    # ------------------------------------------------------------------ conditioning

    @torch.no_grad()
    def encode_identity(self, id_embeds: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Prompt embeddings (N, 77, hidden) for ID vectors (N, D), as Arc2Face conditions its UNet.

        Vectors are checked and L2-normalised first (with a warning when they were not unit-norm).
        """
        unit = check_id_embeds(id_embeds, self.config.id_dim)
        return id_encoder.encode_ids(self.text_encoder, self.tokenizer, unit, device=self._execution_device)

    @torch.no_grad()
    def encode_unconditional(self, count: int = 1) -> torch.Tensor:
        """The empty prompt through the fine-tuned encoder: the unconditional branch of CFG."""
        return id_encoder.encode_prompt(self.text_encoder, self.tokenizer, "", count, device=self._execution_device)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        id_embeds: torch.Tensor | np.ndarray,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        callback: Callable | None = None,
        callback_steps: int = 1,
    ) -> Arc2FacePipelineOutput | tuple:
        """Render `num_images_per_prompt` images of each identity.

        Args:
            id_embeds: (N, D) ArcFace ID vectors (tensor or array; a 1-D vector is one identity).
                Rows are L2-normalised; rows that were not unit-norm trigger a warning.
            num_images_per_prompt: K images per identity; the output holds N*K images,
                identity-major (all K images of identity 0, then identity 1, ...).
            num_inference_steps: denoising steps (25 for DPM-Solver++, 2-4 with LCM-LoRA), 1 to
                `max_inference_steps()` (1000 for SD 1.5 schedulers, 50 for LCM).
            guidance_scale: classifier-free guidance weight, a finite number from 0 to
                `MAX_GUIDANCE_SCALE`; <= 1 disables the unconditional pass.
            height, width: output size in pixels, multiples of the VAE factor up to
                `MAX_IMAGE_SIDE` (None: the UNet's native size, 512 for Arc2Face).
            generator: one `torch.Generator` per output image (a list of N*K) makes each image
                depend only on its own generator, whatever else is in the batch; a single
                generator seeds the whole batch; None uses the global RNG.
            latents: optional finite starting noise (N*K, 4, h, w); drawn from `generator` otherwise.
            eta: DDIM's eta (0 to 1), passed to schedulers that accept it.
            output_type: "pil", "np", "pt" or "latent".
            return_dict: return an `Arc2FacePipelineOutput` rather than a tuple.
            callback_on_step_end: called after every step as `fn(pipe, step, timestep, kwargs)`
                with the tensors named in `callback_on_step_end_tensor_inputs`; may return a dict
                replacing some of them (e.g. `latents`).
            callback_on_step_end_tensor_inputs: a list of names from `_callback_tensor_inputs`
                (default `["latents"]`).
            callback, callback_steps: diffusers' older form, `callback(step, timestep, latents)`
                every `callback_steps` steps (a positive integer).

        Raises:
            InvalidInputError: any argument `check_inputs` refuses: bad or non-finite ID vectors,
                sizes, steps, guidance, eta, latents, generator count or output type; a callback that
                is not callable, or returns something other than None or a dict of tensors of the
                shapes it was given.
            DeviceMemoryError: the GPU ran out of memory; the message suggests a batch size.
        """
        # 1. Check inputs: anything non-finite or out of range is refused before any work is done.
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        _check_callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps)
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if callback is not None:
            callback_on_step_end = _legacy_callback(callback, callback_steps, callback_on_step_end,
                                                    getattr(self.scheduler, "order", 1))
            tensor_inputs = list(dict.fromkeys([*tensor_inputs, "latents"]))
        unit, height, width = self.check_inputs(
            id_embeds, num_images_per_prompt, num_inference_steps, guidance_scale, height, width, generator,
            latents, eta, output_type, tensor_inputs,
        )
        batch = unit.shape[0] * num_images_per_prompt
        # 2. Denoise and decode (steps 2a-2e in `_generate`); an out-of-memory GPU becomes a message.
        try:
            images = self._generate(unit, num_images_per_prompt, num_inference_steps, guidance_scale, height,
                                    width, generator, latents, eta, output_type, callback_on_step_end, tensor_inputs)
        except torch.OutOfMemoryError as exc:
            self._free_after_oom()
            raise DeviceMemoryError(_oom_message(batch, height, width, self.unet.dtype, exc)) from None
        finally:
            self.maybe_free_model_hooks()
        # 3. Output.
        if not return_dict:
            return images, unit
        return Arc2FacePipelineOutput(images=images, id_embeds=unit)

    def _generate(self, unit, k, steps, guidance_scale, height, width, generator, latents, eta, output_type,
                  callback_on_step_end, tensor_inputs):
        device = self._execution_device
        dtype = self.unet.dtype
        batch = unit.shape[0] * k
        do_cfg = guidance_scale > 1.0

        # 2a. Encode the identities (and the empty prompt for classifier-free guidance).
        prompt_embeds = id_encoder.encode_ids(self.text_encoder, self.tokenizer, unit, device=device)
        prompt_embeds = prompt_embeds.to(device, dtype).repeat_interleave(k, dim=0)
        uncond = self.encode_unconditional(1).to(device, dtype) if do_cfg else None

        # 2b. Timesteps, 2c. starting noise.
        self.scheduler.set_timesteps(steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self._prepare_latents(batch, height, width, generator, latents, device, dtype)
        step_kwargs = self._step_kwargs(generator, eta)

        # 2d. Denoising loop.
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if do_cfg:
                    context = torch.cat([uncond.expand(batch, -1, -1), prompt_embeds])
                    model_in = torch.cat([latents, latents])
                else:
                    context, model_in = prompt_embeds, latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                noise = self.unet(model_in, t, encoder_hidden_states=context, return_dict=False)[0]
                if do_cfg:
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    returned = callback_on_step_end(self, i, t, {name: local[name] for name in tensor_inputs})
                    returned = _checked_callback_result(callback_on_step_end, returned, local)
                    latents = returned.get("latents", latents)
                    prompt_embeds = returned.get("prompt_embeds", prompt_embeds)
                progress.update()

        # 2e. Decode.
        if output_type == "latent":
            return latents
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(decoded.float(), output_type=output_type)

    def _prepare_latents(self, batch, height, width, generator, latents, device, dtype):
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            # Draw in float32 so a seed gives the same starting noise in every dtype.
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise InvalidInputError(f"latents have shape {tuple(latents.shape)}; expected {shape}.")
        return (latents.to(device, torch.float32) * self.scheduler.init_noise_sigma).to(dtype)

    def _step_kwargs(self, generator, eta) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def max_inference_steps(self) -> int:
        """The most denoising steps the current scheduler can take: its training timesteps (1000 for
        SD 1.5), or fewer where the scheduler says so (LCM: its `original_inference_steps`, 50)."""
        config = self.scheduler.config
        bounds = [b for b in (config.get("num_train_timesteps"), config.get("original_inference_steps")) if b]
        return int(min(bounds, default=MAX_TRAIN_TIMESTEPS))

    def check_inputs(self, id_embeds, num_images_per_prompt, num_inference_steps, guidance_scale, height, width,
                     generator, latents, eta, output_type, callback_on_step_end_tensor_inputs):
        """Refuse every argument that would fail late or render something silently wrong.

        Returns the checked (N, D) unit ID vectors and the output height and width. Non-finite
        numbers (NaN, inf) are refused everywhere, as are sizes outside 1 x the VAE factor to
        `MAX_IMAGE_SIDE`, steps beyond `max_inference_steps()` and guidance outside
        0 to `MAX_GUIDANCE_SCALE`.

        Raises:
            InvalidInputError: naming the argument, the value received and what is accepted.
        """
        unit = check_id_embeds(id_embeds, self.config.id_dim)
        n, k = unit.shape[0], num_images_per_prompt
        check_int("num_images_per_prompt", k, 1, None)
        check_int("num_inference_steps", num_inference_steps, 1, self.max_inference_steps(),
                   why=f"the {type(self.scheduler).__name__} scheduler takes at most that many")
        check_real("guidance_scale", guidance_scale, 0.0, MAX_GUIDANCE_SCALE,
                    why="Arc2Face uses 3.0; 1.0 or less turns classifier-free guidance off")
        check_real("eta", eta, 0.0, 1.0, why="DDIM's eta mixes in fresh noise, 0 (deterministic) to 1")
        factor = self.vae_scale_factor
        native = self.unet.config.sample_size * factor
        sizes = {}
        for name, value in (("height", height), ("width", width)):
            if value is None:
                sizes[name] = native
                continue
            check_int(name, value, factor, MAX_IMAGE_SIDE, why=f"the model's own size is {native}; pass None for it")
            if value % factor:
                raise InvalidInputError(
                    f"{name} {value} is not a multiple of {factor} (the VAE factor); use {value - value % factor or factor}."
                )
            sizes[name] = value
        if isinstance(generator, list):
            if len(generator) != n * k:
                raise InvalidInputError(
                    f"Got {len(generator)} generators for {n} identities x {k} images = {n * k} images; "
                    "pass one generator per output image (identity-major order), a single generator, or None."
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise InvalidInputError("generator must be a torch.Generator, a list of them, or None.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidInputError(f"generator must be a torch.Generator, a list of them, or None; got {type(generator).__name__}.")
        if latents is not None:
            if not isinstance(latents, torch.Tensor):
                raise InvalidInputError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
            if not bool(torch.isfinite(latents).all()):
                raise InvalidInputError("latents contain NaN or inf; starting noise must be finite.")
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise InvalidInputError(
                f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from {self._callback_tensor_inputs}."
            )
        return unit, sizes["height"], sizes["width"]

    def _free_after_oom(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ speed and memory options

    def use_lcm(self, lora: str | Path | None = None, *, allow_pickle: bool | None = None,
                **load_kwargs) -> Arc2FacePipeline:
        """Switch to Latent Consistency sampling (2-4 steps, guidance 1.0).

        Args:
            lora: LCM-LoRA for SD 1.5 (`latent-consistency/lcm-lora-sdv1-5`): a repo id, a local
                folder or a weights file; it is loaded into the UNet and fused. Needs `peft`.
            allow_pickle: also read a pickled `*.bin` LoRA; SYNTHFACE_ALLOW_PICKLE=1 opts in as
                well. Without it only `.safetensors` LoRA weights are read. A pickled LoRA is loaded as
                named, or as its converted copy beside it (a .safetensors whose metadata
                `source_sha256` is the pickled file's sha256), never as another safetensors there.
            **load_kwargs: passed to `load_lora_weights` (e.g. `weight_name`).

        Raises:
            ModelNotFoundError: the LoRA is pickled without an opt-in, or cannot be found or read.
            InvalidInputError: a folder holds a pickled LoRA beside an unrelated safetensors.
        """
        from diffusers import LCMScheduler

        if lora is not None:
            self._load_lora(lora, allow_pickle, load_kwargs)
            self.fuse_lora()
        self.scheduler = LCMScheduler.from_config(self.scheduler.config)
        return self

    def _load_lora(self, lora, allow_pickle, load_kwargs) -> None:
        from synthface.weights import pickle_allowed, pickle_refusal, pickled_only

        path = Path(str(lora)).expanduser()
        if path.is_dir() and "weight_name" not in load_kwargs:
            path = _lora_file_in(path) or path
        if path.is_file():  # a weights file: its folder plus its name, so the suffix check below sees it
            path = _converted_copy(path) or path  # never another safetensors than the file's own conversion
            lora, load_kwargs = str(path.parent), {**load_kwargs, "weight_name": path.name}
        allowed = pickle_allowed(allow_pickle)
        if not allowed:
            name = load_kwargs.get("weight_name")
            if name is not None and not str(name).endswith(".safetensors"):
                raise pickle_refusal(f"LoRA in {lora}", [name])
            if name is None and pickled_only(path):
                raise pickle_refusal(f"LoRA in {lora}", [p.name for p in pickled_only(path)])
            load_kwargs["use_safetensors"] = True
        try:
            self.load_lora_weights(str(lora), adapter_name="lcm", **load_kwargs)
        except (OSError, ValueError) as exc:
            hint = "" if allowed else " Only .safetensors LoRA weights load without an opt-in."
            raise ModelNotFoundError(
                f"Cannot load the LCM-LoRA from {lora}: {_first_line(exc)}. Fetch it with "
                f"`synthface models download lcm-lora-sdv15` and pass its folder or file.{hint}"
            ) from None

    def optimize(
        self,
        *,
        attention: str = "auto",
        compile: bool = False,
        vae_slicing: bool = False,
        offload: str | None = None,
    ) -> Arc2FacePipeline:
        """Apply speed/memory settings; returns self.

        Args:
            attention: "sdpa" (PyTorch scaled-dot-product attention, diffusers' default),
                "xformers" (requires xformers) or "auto" (xformers when installed and on CUDA).
            compile: `torch.compile` the UNet in place (first call is slow; CUDA recommended).
            vae_slicing: decode one image at a time, bounding VAE memory for large batches.
            offload: None, "model" (whole models to the GPU in turn) or "sequential" (layer by
                layer, slowest, least memory); both need a CUDA device.
        """
        from diffusers.models.attention_processor import AttnProcessor2_0

        if attention not in ("auto", "sdpa", "xformers"):
            raise InvalidInputError(f"attention must be 'auto', 'sdpa' or 'xformers', got {attention!r}.")
        want_xformers = attention == "xformers" or (
            attention == "auto" and _xformers_installed() and self._execution_device.type == "cuda"
        )
        if want_xformers:
            if not _xformers_installed():
                raise InvalidInputError("attention='xformers' needs the xformers package (pip install xformers).")
            self.enable_xformers_memory_efficient_attention()
        else:
            self.unet.set_attn_processor(AttnProcessor2_0())
            self.vae.set_attn_processor(AttnProcessor2_0())
        if vae_slicing:
            self.vae.enable_slicing()
        if offload is not None:
            if offload not in ("model", "sequential"):
                raise InvalidInputError(f"offload must be None, 'model' or 'sequential', got {offload!r}.")
            if not torch.cuda.is_available():
                raise InvalidInputError("CPU offload moves models to a CUDA GPU in turn; no CUDA device is available.")
            if offload == "model":
                self.enable_model_cpu_offload()
            else:
                self.enable_sequential_cpu_offload()
        if compile:
            self.unet.compile(fullgraph=True)
        return self


#: Metadata key of a LoRA .safetensors converted from a pickled file: that file's sha256. Only such a
#: copy is ever loaded in place of the pickled file it records (`_converted_copy`).
LORA_SOURCE_KEY = "source_sha256"


def _lora_file_in(folder: Path) -> Path | None:
    """The file to load from a LoRA folder holding pickled weights: the pickled file when it is the only
    weights file, its converted copy when one is beside it; None when the folder holds safetensors only
    (or nothing), for diffusers to choose as usual. A pickled file beside an unrelated safetensors is
    ambiguous: an InvalidInputError naming both, never a silent swap."""
    from synthface.weights import PICKLE_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    pickled = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    safe = [p for p in files if p.suffix == ".safetensors"]
    if not pickled or len(pickled) > 1 and not safe:
        return None  # safetensors only, or diffusers' own choice among several pickled files
    converted = [c for c in map(_converted_copy, pickled) if c is not None]
    if converted or not safe:
        return converted[0] if converted else pickled[0]
    raise InvalidInputError(
        f"The LoRA folder {folder} holds pickled weights ({', '.join(p.name for p in pickled)}) and "
        f"{', '.join(p.name for p in safe)} beside them, which does not record being converted from them "
        f"(metadata {LORA_SOURCE_KEY}), so synthface does not guess which one is meant. Pass the file to load: "
        f"{folder / pickled[0].name} (pickled: with --allow-pickle) or {folder / safe[0].name}."
    )


def _converted_copy(path: Path) -> Path | None:
    """The .safetensors beside the pickled file `path` whose metadata records `path`'s sha256 (its
    converted copy, loaded without unpickling), else None (also for a `path` that is not pickled)."""
    import hashlib

    from safetensors import safe_open

    from synthface.weights import PICKLE_SUFFIXES

    if path.suffix not in PICKLE_SUFFIXES:
        return None
    candidates = sorted(path.parent.glob("*.safetensors"))
    if not candidates:
        return None
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    for candidate in candidates:
        try:
            with safe_open(str(candidate), "pt") as handle:
                if (handle.metadata() or {}).get(LORA_SOURCE_KEY) == digest:
                    return candidate
        except Exception:  # a damaged or foreign file is not a converted copy
            continue
    return None


def _check_callbacks(on_step_end, tensor_inputs, callback, callback_steps) -> None:
    """Refuse a callback that is not callable, tensor inputs given as one string, and a callback_steps
    that is not a positive integer, before any step runs."""
    for name, value in (("callback_on_step_end", on_step_end), ("callback", callback)):
        if value is not None and not callable(value):
            raise InvalidInputError(
                f"{name} must be a function called after each denoising step (or None), got {value!r:.60} "
                f"({type(value).__name__}). Pass the function itself, e.g. {name}=my_function."
            )
    if isinstance(tensor_inputs, str):
        raise InvalidInputError(
            f"callback_on_step_end_tensor_inputs must be a list of tensor names, got the string {tensor_inputs!r}; "
            f"pass [{tensor_inputs!r}]."
        )
    check_int("callback_steps", callback_steps, 1, None, why="the callback runs every that many steps")


def _legacy_callback(callback, every: int, on_step_end, order: int):
    """diffusers' older `callback(step, timestep, latents)` every `every` steps, as a step-end callback
    (run after `on_step_end`, if any, on the latents it returned)."""

    def run(pipe, i, t, tensors):
        returned = on_step_end(pipe, i, t, tensors) if on_step_end is not None else None
        returned = _checked_callback_result(on_step_end, returned, tensors) if on_step_end is not None else {}
        if i % every == 0:
            callback(i // order, t, returned.get("latents", tensors["latents"]))
        return returned

    return run


def _checked_callback_result(fn, returned, given: dict) -> dict:
    """A step-end callback's result: None (nothing replaced) or a dict replacing some of the tensors it
    may see by tensors of the same shape; anything else an InvalidInputError naming the callback."""
    who = getattr(fn, "__qualname__", type(fn).__name__)
    if returned is None:
        return {}
    if not isinstance(returned, dict):
        raise InvalidInputError(
            f"callback_on_step_end {who} returned {returned!r:.60} ({type(returned).__name__}); it must return None or a dict "
            "of the tensors it replaces, e.g. {'latents': latents}."
        )
    for name, value in returned.items():
        if name not in given:
            continue  # names the pipeline does not track are ignored, as diffusers does
        if not isinstance(value, torch.Tensor) or value.shape != given[name].shape:
            found = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"{value!r:.60} ({type(value).__name__})"
            raise InvalidInputError(
                f"callback_on_step_end {who} returned {name!r} as {found}; a replacement must be a tensor of "
                f"the shape it was given, {tuple(given[name].shape)}."
            )
    return returned


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _xformers_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("xformers") is not None


def _oom_message(batch: int, height: int, width: int, dtype: torch.dtype, exc: Exception) -> str:
    smaller = max(1, batch // 2)
    return (
        f"The GPU ran out of memory rendering {batch} images of {height}x{width} in {dtype} at once. "
        f"Render fewer images per call (try a batch of {smaller} or less, e.g. `--batch-size {smaller}`), "
        "use fp16/bf16, enable VAE slicing, or offload models to the CPU. "
        f"(CUDA said: {str(exc).splitlines()[0] if str(exc) else 'out of memory'})"
    )
