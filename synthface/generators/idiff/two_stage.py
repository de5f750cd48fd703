"""UIFace's two-stage sampler (`sample_ddim_2stage`): the per-step eps of `IDiffFacePipeline`'s
`sampler="uiface"`, with its stage-1 attention maps and per-image switch.

Every step runs both passes in one forward of 2B rows (`IDiffUNet.forward_pair`): pass A with the
empty context, pass B reading A's self-attention logits.

- **Stage 1** (t >= stage_threshold): pass B gives the identity only to images whose flag is on
  (the empty embedding elsewhere), cross-attention untouched; eps = eps_B, unguided, so unswitched
  images follow the empty-context model. From B's cross logits each image gets an attention map
  (`attention_map`). The first stage-1 step only stores it; each later one compares it with the
  previous map (`partition_distance`, a mean absolute difference, "rmse" in the code) and turns an
  image's flag on for good when the distance is below `mse_threshold`, taking effect from the
  **next** step (a switch at the last stage-1 step changes nothing).
- **Stage 2** (t < stage_threshold): B has the identity everywhere, its cross logits
  re-standardised towards A's statistics; eps = (1 + s) eps_B - s eps_A, s = guidance_scale - 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthface.errors import InvalidInputError


def attention_map(cross: list[torch.Tensor], size: int) -> torch.Tensor:
    """(B, size, size) stage-1 attention map from pass B's cross logits, one (B, heads, HW, tokens)
    tensor per attention block (HW a square). Per block: softmax over the **query positions**, mean
    over the tokens, then over the heads, divided by the per-image maximum, reshaped to a square,
    resized bilinearly to size x size (align_corners False) and clamped to [0, 1]. The block maps are
    averaged, then min-max normalised per image. Computed in float32."""
    if not cross:
        raise InvalidInputError(
            "The UIFace sampler needs the UNet's cross-attention maps, but this UNet has no attention block; "
            "use sampler='cfg' with it."
        )
    maps = []
    for logits in cross:
        b, _, queries, _ = logits.shape
        side = int(round(queries ** 0.5))
        m = torch.softmax(logits.float(), dim=-2).mean(dim=-1).mean(dim=1)
        m = m / m.max(dim=1, keepdim=True).values
        m = F.interpolate(m.reshape(b, 1, side, side), size=(size, size), mode="bilinear", align_corners=False)
        maps.append(m.squeeze(1).clamp(0, 1))
    mean = torch.stack(maps, dim=1).mean(dim=1)
    flat = mean.reshape(mean.shape[0], -1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    return (mean - low[:, None, None]) / (high - low)[:, None, None]


def partition_distance(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """(B,) mean over the map of |current - previous|: the published code's "rmse", computed as it is
    (the square root of the elementwise squared error, averaged), which is a mean absolute difference."""
    return (previous - current).pow(2).sqrt().mean(dim=(1, 2))


def stage_one_steps(timesteps, stage_threshold: int) -> list[int]:
    """The visited timesteps in stage 1 (t >= stage_threshold), in visiting order."""
    return [int(t) for t in timesteps if int(t) >= stage_threshold]


def check_stage_threshold(timesteps, stage_threshold: int, num_inference_steps: int) -> None:
    """Refuse a `stage_threshold` that leaves no stage-1 step (the published code then fails on an
    unbound variable): the first visited timestep must be >= stage_threshold."""
    first = int(timesteps[0])
    if stage_threshold > first:
        raise InvalidInputError(
            f"stage_threshold {stage_threshold} leaves the UIFace sampler no stage-1 step: with "
            f"num_inference_steps={num_inference_steps} the first timestep visited is {first}, and stage 1 is every "
            f"timestep >= stage_threshold, where each image's attention map decides when it switches to its "
            f"identity. Pass stage_threshold <= {first} (UIFace's published setting is 500), or more steps."
        )


class TwoStageSampler:
    """The state of one UIFace two-stage run over a batch: per-image flags, the previous map, and a
    record of the distances and switches. Call `eps(latents, t)` once per visited step, in order.

    Args:
        unet: an `IDiffUNet` (its `forward_pair` batches both passes of a step).
        context: (B, 512) identity embeddings on the UNet's device and dtype.
        guidance_scale: diffusers' g; stage 2 uses s = g - 1 as (1 + s) eps_B - s eps_A.
        mse_threshold: the switch threshold on `partition_distance` (published 0.006).
        stage_threshold: stage 1 is t >= stage_threshold (published 500).
        map_size: the attention maps' side (the latent side, 32 published).
    """

    def __init__(self, unet, context: torch.Tensor, guidance_scale: float, mse_threshold: float,
                 stage_threshold: int, map_size: int):
        self.unet, self.context = unet, context
        self.cfg_scale = guidance_scale - 1.0
        self.mse_threshold, self.stage_threshold, self.map_size = mse_threshold, stage_threshold, map_size
        batch = context.shape[0]
        self.flags = torch.zeros(batch, dtype=torch.bool, device=context.device)
        self.previous: torch.Tensor | None = None
        #: one (B,) tensor per stage-1 step after the first
        self.distances: list[torch.Tensor] = []
        #: per image, the timestep whose comparison switched it on (effective from the next step), -1 never
        self.switched_at = torch.full((batch,), -1, dtype=torch.int64)

    def eps(self, latents: torch.Tensor, t: int) -> torch.Tensor:
        """The eps of the step at timestep `t` (float32), updating the flags in stage 1."""
        if t >= self.stage_threshold:
            _, eps_b, cross = self.unet.forward_pair(latents, t, self.context, use_context=self.flags.clone(),
                                                     restandardise=False, return_cross=True)
            self._update(attention_map(cross, self.map_size), t)
            return eps_b.float()
        eps_a, eps_b, _ = self.unet.forward_pair(latents, t, self.context, use_context=True, restandardise=True)
        s = self.cfg_scale
        return (1 + s) * eps_b.float() - s * eps_a.float()

    def _update(self, current: torch.Tensor, t: int) -> None:
        if self.previous is not None:
            distance = partition_distance(self.previous, current)
            switch = (distance < self.mse_threshold) & ~self.flags
            self.flags = self.flags | switch
            self.switched_at[switch.cpu()] = t
            self.distances.append(distance.cpu())
        self.previous = current

    def record(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances (S1 - 1, B) float32, one row per stage-1 step after the first; switched_at (B,))."""
        batch = self.flags.shape[0]
        rows = torch.stack(self.distances) if self.distances else torch.zeros(0, batch)
        return rows.float(), self.switched_at.clone()
