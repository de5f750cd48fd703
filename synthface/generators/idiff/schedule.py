"""The DDPM schedule every IDiff-Face-family model was trained and sampled with (T = 1000, linear
betas, epsilon prediction): the eight buffers the published DDPM wrapper registers, computed the
way it computes them (float32 throughout; alpha_bars as exp(cumsum(log(1 - beta))), which differs
from a cumprod by up to 5.2e-7 relative)."""

from __future__ import annotations

import torch

#: Diffusion steps of every published model.
NUM_TRAIN_TIMESTEPS = 1000
#: The linear beta range (float32 linspace).
BETA_START, BETA_END = 1e-4, 0.02
#: The buffer names, in the order the wrapper registers them (and checkpoints list them).
BUFFER_NAMES = ("betas", "alphas", "sigmas", "sqrt_alphas_inv", "alpha_bars", "sqrt_alpha_bars",
                "sqrt_one_minus_alpha_bars", "one_minus_alphas_over_sqrt_one_minus_alpha_bars")


def ddpm_buffers(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END) -> dict[str, torch.Tensor]:
    """{name: (T,) float32 tensor} for `BUFFER_NAMES`, as the published wrapper registers them."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    alphas = 1.0 - betas
    alpha_bars = torch.exp(torch.cumsum(torch.log(alphas), dim=0))
    return {
        "betas": betas,
        "alphas": alphas,
        "sigmas": torch.sqrt(betas),
        "sqrt_alphas_inv": 1.0 / torch.sqrt(alphas),
        "alpha_bars": alpha_bars,
        "sqrt_alpha_bars": torch.sqrt(alpha_bars),
        "sqrt_one_minus_alpha_bars": torch.sqrt(1.0 - alpha_bars),
        "one_minus_alphas_over_sqrt_one_minus_alpha_bars": (1.0 - alphas) / torch.sqrt(1.0 - alpha_bars),
    }
