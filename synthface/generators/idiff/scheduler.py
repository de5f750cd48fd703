"""The two samplers every IDiff-Face-family script uses, as diffusers schedulers (ConfigMixin +
SchedulerMixin: `save_pretrained`, `from_config`, `set_timesteps`, `step`).

Neither is a stock diffusers scheduler, and neither may be "simplified" into one:

- `IDiffDDIMScheduler` is DDIM exactly as UIFace, IDperturb and NegFaceDiff code it. It visits
  t = 0, skip, 2 skip, ... < T (skip = T // steps) in descending order, but reads the previous
  alpha-bar from a table shifted by one: ab_prev = ab[t - skip - 1] for t - skip >= 1, else 1. So
  at t = skip the sample becomes the predicted x0, and the last step (t = 0) runs the model once
  more on it. Stock `DDIMScheduler` ("leading", steps_offset 0, set_alpha_to_one) visits the same
  timesteps but uses ab[t - skip]; on a toy model 50 steps differ by 18 on a scale of 121.
- `IDiffDDPMScheduler` is IDiff-Face's (and NegFaceDiff's) ancestral loop over i = 999..0 with
  x <- (x - eps beta_i / sqrt(1 - ab_i)) / sqrt(alpha_i) + sqrt(beta_i) z, and no noise at i <= 1
  (stock `DDPMScheduler` uses the posterior-mean form and adds noise down to t = 1).

Both compute in float32 with 0-d tensors, in the published operation order, and never clip.
Random draws (`draw_noise`) come from torch's global CPU generator when no generator is given (the
published scripts' order), or from one generator per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from synthface.checks import check_int, check_real
from synthface.errors import InvalidInputError
from synthface.generators.idiff.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, ddpm_buffers


@dataclass
class IDiffSchedulerOutput(BaseOutput):
    """Output of a scheduler step.

    Args:
        prev_sample: the sample after the step (B, C, H, W), float32.
        pred_original_sample: the predicted clean sample x0 of this step (DDIM), or None (DDPM).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def draw_noise(shape: tuple[int, ...], generator=None, device=None) -> torch.Tensor:
    """A float32 standard normal tensor of `shape`, moved to `device`.

    generator: None draws `torch.randn(shape)` from torch's global CPU generator (as the published
    scripts do, before `.cuda()`); one `torch.Generator` draws the whole tensor from it (on its own
    device); a list of `shape[0]` generators draws row i from generator i alone, so a row never
    depends on its batch-mates.
    """
    if generator is None:
        noise = torch.randn(shape)
    elif isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, device=generator.device)
    else:
        if len(generator) != shape[0]:
            raise InvalidInputError(
                f"Got {len(generator)} generators for a batch of {shape[0]}; pass one generator per image."
            )
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device).cpu() for g in generator])
    return noise.to(device) if device is not None else noise


def _train_steps_why(steps: int) -> str:
    return f"the model was trained with {steps} diffusion steps"


def _set_schedule(scheduler, num_train_timesteps: int, beta_start: float, beta_end: float) -> None:
    """What both schedulers hold: the published DDPM buffers (`ddpm_buffers`), alphas_cumprod, sigma 1."""
    check_int("num_train_timesteps", num_train_timesteps, 2, None)
    scheduler.buffers = ddpm_buffers(num_train_timesteps, beta_start, beta_end)
    scheduler.alphas_cumprod = scheduler.buffers["alpha_bars"]
    scheduler.init_noise_sigma = 1.0


class IDiffDDIMScheduler(SchedulerMixin, ConfigMixin):
    """DDIM as coded in UIFace / IDperturb / NegFaceDiff (see the module docstring for the rule).

    Args:
        num_train_timesteps: T, the training steps (1000 for every published model).
        beta_start, beta_end: the linear beta range (float32 linspace), 1e-4 to 0.02 published.
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END):
        _set_schedule(self, num_train_timesteps, beta_start, beta_end)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    @staticmethod
    def timestep_list(num_inference_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
        """The visited timesteps, descending: 0, skip, 2 skip, ... < T with skip = T // steps
        (50 -> 980..0, 10 -> 900..0, 6 -> 7 steps 996..0)."""
        skip = num_train_timesteps // num_inference_steps
        return list(range(0, num_train_timesteps, skip))[::-1]

    @property
    def skip(self) -> int:
        """The stride between visited timesteps, T // num_inference_steps."""
        if self.num_inference_steps is None:
            raise InvalidInputError("Call set_timesteps(num_inference_steps) before stepping the scheduler.")
        return self.config.num_train_timesteps // self.num_inference_steps

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set `timesteps` (int64, descending) for `num_inference_steps` (1 to T). The number of steps
        visited is ceil(T / skip), which exceeds `num_inference_steps` when T is not a multiple."""
        total = self.config.num_train_timesteps
        check_int("num_inference_steps", num_inference_steps, 1, total, why=_train_steps_why(total))
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.tensor(self.timestep_list(num_inference_steps, total), dtype=torch.int64, device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The sample unchanged (DDIM needs no input scaling)."""
        return sample

    def alpha_bar_prev(self, timestep: int) -> torch.Tensor:
        """ab_prev of the step at `timestep`: ab[t - skip - 1] when t - skip >= 1, else 1 (0-d float32)."""
        prev = int(timestep) - self.skip
        return self.alphas_cumprod[prev - 1] if prev >= 1 else torch.tensor(1.0)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             generator=None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> IDiffSchedulerOutput | tuple:
        """One DDIM step from `timestep` (float32, the published operation order, no clipping).

        x0 = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t); eps is recomputed from x0; then
        x <- sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps, with
        sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev). With eta > 0,
        sigma * noise is added after the update; noise is `variance_noise` if given, else drawn by
        `draw_noise` from `generator` (None: torch's global generator, the published order).

        Args:
            model_output: the (guided) eps prediction at `timestep`, (B, C, H, W).
            timestep: the integer step the model ran at (one of `timesteps`).
            sample: x_t, (B, C, H, W).
            eta: DDIM's eta, 0 (deterministic, every published path) to 1.
            generator: None, a `torch.Generator`, or one per image (a list of B).
            variance_noise: optional (B, C, H, W) noise used instead of drawing.
            return_dict: return an `IDiffSchedulerOutput` rather than a tuple.
        """
        check_real("eta", eta, 0.0, 1.0, why="DDIM's eta mixes in fresh noise, 0 (deterministic) to 1")
        t = int(timestep)
        x = sample.float()
        eps = model_output.float()
        ab_t = self.alphas_cumprod[t].to(x.device)
        ab_prev = self.alpha_bar_prev(t).to(x.device)
        beta_t = 1 - ab_t
        beta_prev = 1 - ab_prev
        x0 = (x - beta_t ** 0.5 * eps) / ab_t ** 0.5
        variance = (beta_prev / beta_t) * (1 - ab_t / ab_prev)
        std = eta * variance ** 0.5
        eps = (x - ab_t ** 0.5 * x0) / beta_t ** 0.5
        direction = (1 - ab_prev - std ** 2) ** 0.5 * eps
        prev = ab_prev ** 0.5 * x0 + direction
        if eta > 0:
            noise = variance_noise if variance_noise is not None else draw_noise(tuple(x.shape), generator)
            prev = prev + std * noise.to(x.device, torch.float32)
        if not return_dict:
            return (prev, x0)
        return IDiffSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class IDiffDDPMScheduler(SchedulerMixin, ConfigMixin):
    """IDiff-Face's DDPM loop: every step i = T-1..0, noise only for i > 1 (module docstring).

    Args:
        num_train_timesteps: T (1000 published); the loop visits all of them.
        beta_start, beta_end: the linear beta range, 1e-4 to 0.02 published.
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END):
        _set_schedule(self, num_train_timesteps, beta_start, beta_end)
        self.num_inference_steps = num_train_timesteps
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Set `timesteps` to T-1..0. The published loop has no shorter form: `num_inference_steps`
        must be None or T (use `IDiffDDIMScheduler` for fewer steps)."""
        total = self.config.num_train_timesteps
        if num_inference_steps is not None and num_inference_steps != total:
            raise InvalidInputError(
                f"The DDPM sampler visits all {total} training steps, got num_inference_steps={num_inference_steps!r}. "
                f"Pass None or {total}, or sample with DDIM (sampler='cfg') for fewer steps."
            )
        self.num_inference_steps = total
        self.timesteps = torch.arange(total - 1, -1, -1, device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The sample unchanged."""
        return sample

    @staticmethod
    def draws_noise(timestep) -> bool:
        """Whether the step at `timestep` adds noise: only for i > 1, as the published loop does."""
        return int(timestep) > 1

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> IDiffSchedulerOutput | tuple:
        """One DDPM step at `timestep` i (float32, no clipping):
        x <- sqrt_alphas_inv[i] (x - eps beta_i / sqrt(1 - ab_i)) + sigma_i z, z ~ N(0, I) for i > 1
        (`variance_noise`, or drawn from `generator` as in `draw_noise`), no noise for i <= 1.

        Args:
            model_output: the (guided) eps prediction at step i, (B, C, H, W).
            timestep: the integer step i.
            sample: x_i, (B, C, H, W).
            generator: None (torch's global generator), a `torch.Generator`, or one per image.
            variance_noise: optional (B, C, H, W) noise used instead of drawing.
            return_dict: return an `IDiffSchedulerOutput` rather than a tuple.
        """
        i = int(timestep)
        x = sample.float()
        eps = model_output.float()
        buffers = self.buffers
        prev = buffers["sqrt_alphas_inv"][i].to(x.device) * (
            x - eps * buffers["one_minus_alphas_over_sqrt_one_minus_alpha_bars"][i].to(x.device))
        if self.draws_noise(i):
            noise = variance_noise if variance_noise is not None else draw_noise(tuple(x.shape), generator)
            prev = prev + buffers["sigmas"][i].to(x.device) * noise.to(x.device, torch.float32)
        if not return_dict:
            return (prev, None)
        return IDiffSchedulerOutput(prev_sample=prev)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
