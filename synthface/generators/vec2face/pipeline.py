"""Vec2Face and Vec2Face+ as a batched diffusers pipeline: one forward pass per batch, no denoising.

An identity is a unit 512-d ArcFace vector; the generator was trained on raw ArcFace-R100
(Glint360K) features of norm ~22, so vectors are rescaled by `identity_norm` before the forward.
Each image's randomness is a mask rate (a truncated normal) and one noise row that picks which of
the 49 feature tokens are masked. With one `torch.Generator` per image (the default
`rng="per_image"`), an image depends only on its ID vector and its own generator, never on its
batch-mates; `rng="reference"` replays the published scripts' global-RNG draws instead.
Vec2Face+'s pose control takes a landmark image per output (or a (yaw, pitch) pair rendered to
one); its token fills the masked positions of the decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from synthface.checks import check_int, check_real
from synthface.errors import DeviceMemoryError, InvalidInputError
from synthface.generators._checks import CheckedPipelineMixin, check_id_embeds
from synthface.generators.vec2face.landmarks import IMAGE_SIZE, landmarks_to_tensor, render_pose_landmarks
from synthface.generators.vec2face.model import PoseConditionModel, Vec2FaceModel, masks_from_noise, token_count

OUTPUT_TYPES = ("pil", "np", "pt")
RNG_MODES = ("per_image", "reference")
#: The norm of the raw ArcFace features the generator was trained on (0.967 * sqrt(512) ~ 21.9).
DEFAULT_IDENTITY_NORM = 22.0
#: Bounds on `identity_norm`: far around the trained ~22 (the model is meaningless far from it).
IDENTITY_NORM_RANGE = (1e-3, 1e3)


@dataclass(frozen=True)
class MaskRatio:
    """Mask rate distribution: a normal(mu, std) truncated to [min, max]; `std=0` is the fixed rate mu.

    Per image, ceil(49 * min) tokens are dropped (the encoder never sees them) and ceil(49 * rate)
    masked (dropped ones included); masked tokens are rebuilt by the decoder, which is what varies.
    """

    min: float
    max: float
    mu: float
    std: float

    def check(self) -> MaskRatio:
        values = (self.min, self.max, self.mu, self.std)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise InvalidInputError(f"mask_ratio values must be finite numbers, got {self}.")
        if not (0.0 <= self.min <= self.mu <= self.max <= 1.0 and 0.0 <= self.std <= 1.0):
            raise InvalidInputError(
                f"mask_ratio needs 0 <= min <= mu <= max <= 1 and 0 <= std <= 1, got {self}; the published "
                f"presets are {', '.join(f'{k}={v}' for k, v in MASK_PRESETS.items())}."
            )
        return self


#: The published settings: generation scripts, the Gradio demo, Vec2Face+ pose control (nd = 40).
MASK_PRESETS = {
    "scripts": MaskRatio(0.1, 1.0, 0.15, 0.25),
    "demo": MaskRatio(0.1, 0.5, 0.15, 0.25),
    "pose": MaskRatio(0.8, 0.9, 0.85, 0.05),
}


@dataclass
class Vec2FacePipelineOutput(BaseOutput):
    """Output of `Vec2FacePipeline`.

    Args:
        images: N*K images, identity-major: PIL images, an (N*K, 112, 112, 3) float32 array in
            [0, 1], or an (N*K, 3, 112, 112) float32 tensor in [0, 1], by `output_type`.
        id_embeds: the (N, 512) unit ID vectors used (after normalisation), float32.
        mask_rates: (N*K,) float64 mask rate of each image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    id_embeds: torch.Tensor
    mask_rates: torch.Tensor


class Vec2FacePipeline(CheckedPipelineMixin, DiffusionPipeline):
    """Identity-conditioned face generation with Vec2Face (Wu et al., ICLR 2025) and Vec2Face+.

    Args:
        vec2face: the generator (`Vec2FaceModel`; with LoRA for Vec2Face+ pose control).
        pose_model: Vec2Face+'s `PoseConditionModel`, or None (no pose control).
    """

    model_cpu_offload_seq = "pose_model->vec2face"
    _optional_components = ["pose_model"]

    def __init__(self, vec2face: Vec2FaceModel, pose_model: PoseConditionModel | None = None):
        super().__init__()
        self.register_modules(vec2face=vec2face, pose_model=pose_model)

    @property
    def id_dim(self) -> int:
        return self.vec2face.config.rep_dim

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        id_embeds: torch.Tensor | np.ndarray,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        mask_ratio: str | MaskRatio | None = None,
        identity_norm: float = DEFAULT_IDENTITY_NORM,
        rng: str = "per_image",
        landmarks: torch.Tensor | np.ndarray | None = None,
        poses: torch.Tensor | np.ndarray | list | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Vec2FacePipelineOutput | tuple:
        """Render `num_images_per_prompt` images of each identity in one forward pass.

        Args:
            id_embeds: (N, 512) ArcFace ID vectors (tensor or array; a 1-D vector is one identity).
                Rows are L2-normalised (a warning when they were not unit-norm), then scaled to
                `identity_norm`.
            num_images_per_prompt: K images per identity; the output holds N*K images,
                identity-major (all K images of identity 0, then identity 1, ...).
            generator: with `rng="per_image"`: one `torch.Generator` per output image (a list of
                N*K) makes each image depend only on its ID vector and its own generator; a single
                generator is shared in image order; None uses torch's global generator in image
                order. Must be None with `rng="reference"`.
            mask_ratio: a preset name ("scripts": the generation scripts, min/max/mu/std
                0.1/1.0/0.15/0.25; "demo": 0.1/0.5/0.15/0.25; "pose": 0.8/0.9/0.85/0.05, Vec2Face+'s
                pose control) or a `MaskRatio`. None: "pose" with a pose condition, else "scripts".
            identity_norm: the norm the unit vectors are scaled to, a finite number in
                `IDENTITY_NORM_RANGE`; 22 is the scale the model was trained on.
            rng: "per_image" (each image draws its rate, then its 49 noise values, from its own
                generator: batch-independent) or "reference" (the published scripts' draws: one
                truncated-normal rate for the whole batch from numpy's global RandomState through
                scipy, then `torch.rand(N*K, 49)` from torch's global generator on the model's
                device; after `np.random.seed(s); torch.manual_seed(s)` a batch reproduces the
                original code's images, and each image depends on the batch).
            landmarks: Vec2Face+ pose condition, one landmark image per output image: a float
                tensor (N*K, 3, 112, 112) in [-1, 1] or uint8 (N*K, 112, 112, 3) images.
            poses: Vec2Face+ pose condition as (N*K, 2) (yaw, pitch) degrees, rendered to landmark
                images by `render_pose_landmarks`. At most one of `landmarks` and `poses`.
            output_type: "pil" (uint8 as the scripts write: ((x + 1) / 2 * 255) truncated),
                "np" or "pt" (((x + 1) / 2).clamp(0, 1) of the decoder output, float32).
            return_dict: return a `Vec2FacePipelineOutput` rather than a tuple.

        Raises:
            InvalidInputError: any argument `check_inputs` refuses.
            DeviceMemoryError: the GPU ran out of memory; the message suggests a batch size.
        """
        # 1. Check inputs: anything non-finite or out of range is refused before any work is done.
        unit, ratio, condition = self.check_inputs(id_embeds, num_images_per_prompt, generator, mask_ratio,
                                                   identity_norm, rng, landmarks, poses, output_type)
        batch = unit.shape[0] * num_images_per_prompt
        device, dtype = self._execution_device, self.vec2face.dtype
        # 2. Scale the identities to the trained feature norm, one row per output image.
        rep = (unit.to(device) * identity_norm).repeat_interleave(num_images_per_prompt, dim=0)
        # 3. Draw each image's mask rate and token noise; derive the masked and dropped tokens.
        rates, mask, drop = self.draw_masks(batch, ratio, generator, rng, device)
        try:
            # 4. Pose condition (Vec2Face+): the landmark images through the pose model.
            if condition is not None:
                condition = self.pose_model(condition.to(device, self.pose_model.dtype))
            # 5. One forward pass of the generator.
            images = self.vec2face(rep.to(dtype), mask, drop, condition).float()
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceMemoryError(_oom_message(batch, dtype, exc)) from None
        finally:
            self.maybe_free_model_hooks()
        # 6. Output.
        images = postprocess(images, output_type)
        if not return_dict:
            return images, unit, rates
        return Vec2FacePipelineOutput(images=images, id_embeds=unit, mask_rates=rates)

    def draw_masks(self, batch: int, ratio: MaskRatio, generator, rng: str, device) -> tuple:
        """(rates (B,) float64, mask (B, 49), drop (B, 49)) for `batch` images, by `rng` mode."""
        tokens = self.vec2face.num_tokens
        num_dropped = token_count(ratio.min, tokens)
        if rng == "reference":
            rate = _reference_rate(ratio)
            num_masked = token_count(rate, tokens)
            noise = _reference_noise(batch, tokens, (num_dropped, num_masked), device)
            rates = torch.full((batch,), rate, dtype=torch.float64)
        else:
            gens = generator if isinstance(generator, list) else [generator] * batch
            rates = torch.stack([_truncated_normal(ratio, g) for g in gens])
            noise = torch.stack([torch.rand(tokens, generator=g, device=g.device if g is not None else "cpu").cpu()
                                 for g in gens]).to(device)
        counts = torch.tensor([token_count(float(r), tokens) for r in rates])
        mask, drop = masks_from_noise(noise, counts, num_dropped)
        return rates, mask, drop

    def check_inputs(self, id_embeds, num_images_per_prompt, generator, mask_ratio, identity_norm, rng, landmarks,
                     poses, output_type):
        """Refuse every argument that would fail late or render something silently wrong.

        Returns the checked (N, 512) unit ID vectors, the `MaskRatio` and the pose condition's
        landmark tensor (or None). Non-finite numbers are refused everywhere.

        Raises:
            InvalidInputError: naming the argument, the value received and what is accepted.
        """
        unit = check_id_embeds(id_embeds, self.id_dim)
        check_int("num_images_per_prompt", num_images_per_prompt, 1, None)
        batch = unit.shape[0] * num_images_per_prompt
        check_real("identity_norm", identity_norm, *IDENTITY_NORM_RANGE,
                    why=f"the generator was trained on raw ArcFace features of norm ~{DEFAULT_IDENTITY_NORM:g}")
        if rng not in RNG_MODES:
            raise InvalidInputError(f"rng must be one of {RNG_MODES}, got {rng!r}.")
        if rng == "reference" and generator is not None:
            raise InvalidInputError(
                "rng='reference' replays the published scripts' global-RNG draws, so it takes no generator; seed "
                "with np.random.seed(s) and torch.manual_seed(s), or use rng='per_image' with one generator per image."
            )
        if isinstance(generator, list):
            if len(generator) != batch:
                raise InvalidInputError(
                    f"Got {len(generator)} generators for {unit.shape[0]} identities x {num_images_per_prompt} "
                    f"images = {batch} images; pass one generator per output image (identity-major order), a single "
                    "generator, or None."
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise InvalidInputError("generator must be a torch.Generator, a list of them, or None.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidInputError(
                f"generator must be a torch.Generator, a list of them, or None; got {type(generator).__name__}."
            )
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        condition = self._check_condition(landmarks, poses, batch)
        if mask_ratio is None:
            mask_ratio = "pose" if condition is not None else "scripts"
        if isinstance(mask_ratio, str):
            if mask_ratio not in MASK_PRESETS:
                raise InvalidInputError(f"mask_ratio preset must be one of {tuple(MASK_PRESETS)}, got {mask_ratio!r}.")
            mask_ratio = MASK_PRESETS[mask_ratio]
        if not isinstance(mask_ratio, MaskRatio):
            raise InvalidInputError(f"mask_ratio must be a preset name or a MaskRatio, got {type(mask_ratio).__name__}.")
        return unit, mask_ratio.check(), condition

    def _check_condition(self, landmarks, poses, batch: int) -> torch.Tensor | None:
        if landmarks is None and poses is None:
            return None
        if landmarks is not None and poses is not None:
            raise InvalidInputError("Pass either landmarks or poses as the pose condition, not both.")
        if self.pose_model is None:
            raise InvalidInputError(
                "This pipeline has no pose model, so it cannot take landmarks or poses. Load Vec2Face+'s pose "
                "checkpoint (load_vec2face('vec2face-plus-pose') or its pose_model.pth)."
            )
        if poses is not None:
            condition = render_pose_landmarks(poses)
        elif isinstance(landmarks, torch.Tensor) and landmarks.is_floating_point():
            condition = landmarks.detach()
            if condition.ndim != 4 or tuple(condition.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
                raise InvalidInputError(
                    f"Float landmark images must have shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) in [-1, 1], got "
                    f"{tuple(condition.shape)}; draw them with render_pose_landmarks."
                )
            if not bool(torch.isfinite(condition).all()) or float(condition.abs().max()) > 1.0:
                raise InvalidInputError("Float landmark images must be finite and in [-1, 1] (x / 255 * 2 - 1).")
        else:
            condition = landmarks_to_tensor(landmarks)
        if condition.shape[0] != batch:
            raise InvalidInputError(
                f"Got {condition.shape[0]} pose conditions for {batch} output images; pass one per image "
                "(identity-major order)."
            )
        return condition

    # ------------------------------------------------------------------ speed options

    def optimize(self, *, attention: str = "exact", compile: bool = False) -> Vec2FacePipeline:
        """Speed settings; returns self.

        Args:
            attention: "exact" (the published score arithmetic) or "sdpa" (fused
                scaled-dot-product attention; differs by rounding only).
            compile: `torch.compile` the generator in place (first call slow; CUDA recommended).
        """
        self.vec2face.set_attention(attention)
        if compile:
            self.vec2face.compile()
        return self


def postprocess(images: torch.Tensor, output_type: str):
    """Decoder output (B, 3, H, W) in ~[-1, 1] -> PIL (uint8 truncated as the scripts write),
    np (B, H, W, 3) float32 in [0, 1], or pt (B, 3, H, W) float32 in [0, 1]."""
    if output_type == "pil":
        return [PIL.Image.fromarray(a) for a in to_uint8(images)]
    unit = ((images + 1) / 2).clamp(0, 1).cpu()
    return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) decoder output -> (B, H, W, 3) uint8, ((x + 1) / 2 * 255) clipped and truncated
    exactly as the published scripts write their images."""
    scaled = ((images.float() + 1) / 2 * 255).clamp(0, 255)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _truncated_normal(ratio: MaskRatio, generator: torch.Generator | None) -> torch.Tensor:
    """One rate from `generator` by the inverse CDF (one float64 uniform); std 0 draws nothing."""
    if ratio.std == 0:
        return torch.tensor(ratio.mu, dtype=torch.float64)
    device = generator.device if generator is not None else "cpu"
    u = torch.rand((), generator=generator, dtype=torch.float64, device=device).cpu()
    lo, hi = (torch.tensor((v - ratio.mu) / ratio.std, dtype=torch.float64) for v in (ratio.min, ratio.max))
    p = torch.special.ndtr(lo) + u * (torch.special.ndtr(hi) - torch.special.ndtr(lo))
    return (ratio.mu + ratio.std * torch.special.ndtri(p)).clamp(ratio.min, ratio.max)


def _reference_rate(ratio: MaskRatio) -> float:
    """The published draw: `scipy.stats.truncnorm(...).rvs(1)` on numpy's global RandomState."""
    if ratio.std == 0:
        return ratio.mu
    try:
        from scipy import stats
    except ImportError:
        raise InvalidInputError(
            "rng='reference' replays scipy.stats.truncnorm's draw and needs scipy (pip install scipy); "
            "rng='per_image' does not."
        ) from None
    a, b = (ratio.min - ratio.mu) / ratio.std, (ratio.max - ratio.mu) / ratio.std
    return float(stats.truncnorm(a, b, loc=ratio.mu, scale=ratio.std).rvs(1)[0])


def _reference_noise(batch: int, tokens: int, counts: tuple[int, ...], device) -> torch.Tensor:
    """`torch.rand(batch, tokens)` on torch's global generator, redrawn (as the published code does)
    while a cutoff value is tied so that a row would mask more tokens than counted."""
    while True:
        noise = torch.rand(batch, tokens, device=device)
        ordered = noise.sort(dim=1).values
        tied = any(0 < n < tokens and bool((ordered[:, n - 1] == ordered[:, n]).any()) for n in counts)
        if not tied:
            return noise


def _oom_message(batch: int, dtype: torch.dtype, exc: Exception) -> str:
    smaller = max(1, batch // 2)
    return (
        f"The GPU ran out of memory rendering {batch} Vec2Face images in {dtype} at once. Render fewer images "
        f"per call (try a batch of {smaller} or less, e.g. `--batch-size {smaller}`) or use bf16/fp16. "
        f"(CUDA said: {str(exc).splitlines()[0] if str(exc) else 'out of memory'})"
    )
