"""IDiff-Face's denoiser (`ConditionalUNet`, condition type "CA") as a diffusers model whose
state-dict names are the published ones, written from IDIFF.md (no published code is used).

An epsilon-prediction UNet on 3x32x32 VQ-f4 latents, conditioned on one L2-normalised 512-d
ElasticFace-Arc R100 embedding: `context_emb` projects it to 256-d, and every attention block makes
its own 32 cross-attention tokens from that vector. The "empty" condition (classifier-free guidance,
UIFace's pass A) replaces the *projected* 256-d context with `empty_context_embedding`: learned in
UIFace, zeros (a non-persistent buffer, absent from the state dict) in IDiff-Face and NegFaceDiff.

Layout at the published config (96 channels, multipliers (1, 2, 2, 2) applied cumulatively: 96,
192, 384, 768 channels at 32, 16, 8, 4 px; attention at levels 1-3 with 32-channel heads):
`image_proj`; `down.0`..`down.10` (two residual blocks per level, plus an attention block where the
level has attention, then a stride-2 conv except after the last level); `middle` (res1, attn,
res2); `up.0`..`up.14` (per level, coarsest first, three residual blocks each concatenating
[h, skip] from the stack of `image_proj` and every `down.*` output; the level's *last* block
reduces the channels by the level's multiplier, so `up.10` attends at 96 channels with 3 heads;
then a 4x4 stride-2 ConvTranspose except after level 0); `norm`, SiLU, `final`. 216,341,443
parameters in 843 tensors (216,341,187 / 842 without the learned empty context).

Residual blocks are AdaGN: norm1, SiLU, conv1; e = `time_emb.1`(SiLU(t_emb)); h = (1 + `scale_emb`(e)) *
`norm2.norm`(h) + `shift_emb`(e); SiLU, conv2 (zero-initialised); plus `shortcut`(x) (1x1 conv where the
channels change). The time embedding is cos(t f) then sin(t f) for 48 frequencies exp(-ln(1e4) k / 48),
then `time_emb.lin1`, SiLU, `time_emb.lin2`. Attention blocks: `synthface.generators.idiff.attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from synthface.errors import InvalidInputError
from synthface.generators.idiff.attention import GN_EPS, GN_GROUPS, AttentionBlock, PairMode

CONDITION_HINT = (
    "IDiff-Face-family models are conditioned on one L2-normalised 512-d ElasticFace-Arc R100 face embedding "
    "per image (the family's conditioning space; not ArcFace, and not the 256-d projected context the UNet "
    "makes from it): embed the faces with that recogniser, L2-normalise each row, and pass a (batch, "
    "{width}) float tensor; for the empty (unconditional) context pass context=None or the `empty` row flags."
)


class TimeEmbedding(nn.Module):
    """Integer steps (B,) -> (B, 4 C): [cos(t f), sin(t f)] over C / 2 frequencies, lin1, SiLU, lin2."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.lin1 = nn.Linear(channels, 4 * channels)
        self.lin2 = nn.Linear(4 * channels, 4 * channels)

    def frequencies(self, device: torch.device) -> torch.Tensor:
        """exp(-ln(1e4) k / half), k = 0..half-1 (float32; a plain value, not a buffer)."""
        half = self.channels // 2
        return torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / half))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.frequencies(t.device)[None, :]
        emb = torch.cat([angles.cos(), angles.sin()], dim=1).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(emb)))


class AdaptiveGroupNorm(nn.Module):
    """(1 + scale) * GroupNorm(h) + shift, the norm named `norm2.norm` in the published residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)

    def forward(self, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return (1 + scale[:, :, None, None]) * self.norm(h) + shift[:, :, None, None]


class ResidualBlock(nn.Module):
    """AdaGN residual block (see module doc); the identity never enters it under condition type "CA"."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, in_channels, eps=GN_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.scale_emb = nn.Linear(out_channels, out_channels)
        self.shift_emb = nn.Linear(out_channels, out_channels)
        self.norm2 = AdaptiveGroupNorm(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.time_emb(t_emb)
        h = self.norm2(h, self.scale_emb(e), self.shift_emb(e))
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.shortcut(x)


class ResAttnBlock(nn.Module):
    """One `down.i` / `up.i` entry: `res`, then `attn` where the level has attention."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, attention: bool, head_dim: int,
                 projected_context_dim: int, context_tokens: int):
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, time_channels)
        self.attn = (AttentionBlock(out_channels, head_dim, projected_context_dim, context_tokens)
                     if attention else None)

    def forward(self, h, t_emb, context, pair=None):
        h = self.res(h, t_emb)
        return h if self.attn is None else self.attn(h, context, pair)


class Downsample(nn.Module):
    """Conv 3x3, stride 2, padding 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h, t_emb=None, context=None, pair=None):
        return self.conv(h)


class Upsample(nn.Module):
    """ConvTranspose 4x4, stride 2, padding 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, h, t_emb=None, context=None, pair=None):
        return self.conv(h)


class MiddleBlock(nn.Module):
    """`res1`, `attn`, `res2` at the coarsest level."""

    def __init__(self, channels: int, time_channels: int, head_dim: int, projected_context_dim: int,
                 context_tokens: int):
        super().__init__()
        self.res1 = ResidualBlock(channels, channels, time_channels)
        self.attn = AttentionBlock(channels, head_dim, projected_context_dim, context_tokens)
        self.res2 = ResidualBlock(channels, channels, time_channels)

    def forward(self, h, t_emb, context, pair=None):
        return self.res2(self.attn(self.res1(h, t_emb), context, pair), t_emb)


class IDiffUNet(ModelMixin, ConfigMixin):
    """IDiff-Face's / UIFace's epsilon model: (B, 3, H, W) latents, integer steps, (B, 512) identity
    embeddings -> eps (B, 3, H, W). The defaults are the published config (see the module doc);
    `learn_empty_context=False` is IDiff-Face's and NegFaceDiff's variant (zero empty context).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, initial_channels: int = 96,
                 channel_multipliers: tuple[int, ...] = (1, 2, 2, 2),
                 is_attention: tuple[bool, ...] = (False, True, True, True), n_blocks: int = 2, head_dim: int = 32,
                 context_dim: int = 512, projected_context_dim: int = 256, context_tokens: int = 32,
                 learn_empty_context: bool = True):
        super().__init__()
        multipliers, attention = tuple(channel_multipliers), tuple(is_attention)
        if len(multipliers) != len(attention) or not multipliers:
            raise InvalidInputError(
                f"IDiffUNet needs one attention flag per resolution level: got {len(multipliers)} channel "
                f"multipliers and {len(attention)} is_attention flags; give both lists the same length.")
        widths = [initial_channels * math.prod(multipliers[: i + 1]) for i in range(len(multipliers))]
        for width, attend in zip(widths, attention):
            if width % GN_GROUPS or (attend and width % head_dim):
                raise InvalidInputError(
                    f"IDiffUNet level width {width} must be a multiple of the {GN_GROUPS} GroupNorm groups and, "
                    f"where the level has attention, of head_dim {head_dim}; choose initial_channels and "
                    "channel_multipliers that give such widths.")
        time_channels = 4 * initial_channels
        block = dict(time_channels=time_channels, head_dim=head_dim, projected_context_dim=projected_context_dim,
                     context_tokens=context_tokens)

        if learn_empty_context:
            self.empty_context_embedding = nn.Parameter(torch.randn(projected_context_dim))
        else:
            self.register_buffer("empty_context_embedding", torch.zeros(projected_context_dim), persistent=False)
        self.image_proj = nn.Conv2d(in_channels, initial_channels, 3, padding=1)
        self.time_emb = TimeEmbedding(initial_channels)
        self.context_emb = nn.Linear(context_dim, projected_context_dim)

        down, channels = [], initial_channels
        for level, (width, attend) in enumerate(zip(widths, attention)):
            for _ in range(n_blocks):
                down.append(ResAttnBlock(channels, width, attention=attend, **block))
                channels = width
            if level < len(widths) - 1:
                down.append(Downsample(channels))
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(channels, **block)

        up = []
        for level in reversed(range(len(widths))):
            attend, width = attention[level], widths[level]
            for _ in range(n_blocks):
                up.append(ResAttnBlock(channels + width, width, attention=attend, **block))
            reduced = width // multipliers[level]
            up.append(ResAttnBlock(channels + reduced, reduced, attention=attend, **block))
            channels = reduced
            if level > 0:
                up.append(Upsample(channels))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)
        self.final = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    # ------------------------------------------------------------------ structure

    @property
    def downscale(self) -> int:
        """The factor the sample's height and width must be divisible by (2 per downsampling)."""
        return 2 ** (len(self.config.channel_multipliers) - 1)

    def attention_blocks(self) -> list[AttentionBlock]:
        """The attention blocks in network order (down, middle, up): 16 at the published config."""
        return [m for m in self.modules() if isinstance(m, AttentionBlock)]

    # ------------------------------------------------------------------ input checks

    def _check_sample(self, sample) -> None:
        c, f = self.config.in_channels, self.downscale
        if (not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != c
                or sample.shape[2] % f or sample.shape[3] % f or not sample.is_floating_point()):
            got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise InvalidInputError(
                f"IDiffUNet expects the sample as a floating-point (batch, {c}, height, width) tensor of VQ-f4 "
                f"latents with height and width multiples of {f} (3x32x32 for the published 128x128 faces), got "
                f"{got}; pass latents of that shape (decode images to latents with the first stage, not pixels).")

    def _timesteps(self, timestep, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim != 1 or t.shape[0] != batch or t.is_complex() or t.dtype == torch.bool:
            raise InvalidInputError(
                f"IDiffUNet expects the timestep as one integer step 0..999 or a ({batch},) tensor of them (one per "
                f"sample row), got {tuple(t.shape)} {t.dtype}; pass an int, a 0-d tensor or a tensor of length "
                f"{batch}.")
        return t

    def _check_context(self, context, batch: int) -> None:
        width = self.config.context_dim
        if (not isinstance(context, torch.Tensor) or context.ndim != 2 or context.shape != (batch, width)
                or not context.is_floating_point()):
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise InvalidInputError(
                f"IDiffUNet got a context of shape {got} for {batch} sample rows, expected ({batch}, {width}). "
                + CONDITION_HINT.format(width=width))

    def _flags(self, flags, batch: int, name: str, device) -> torch.Tensor:
        f = torch.as_tensor(flags, device=device)
        if f.ndim == 0:
            f = f.expand(batch)
        if f.dtype != torch.bool or f.shape != (batch,):
            raise InvalidInputError(
                f"IDiffUNet expects `{name}` as a ({batch},) bool tensor (one flag per sample row) or one bool, "
                f"got {tuple(f.shape)} {f.dtype}; pass e.g. torch.zeros({batch}, dtype=torch.bool).")
        return f

    def _empty(self, batch: int) -> torch.Tensor:
        return self.empty_context_embedding.to(self.context_emb.weight.dtype)[None].expand(batch, -1)

    def _projected(self, context, empty, batch: int) -> torch.Tensor:
        if context is None:
            return self._empty(batch)
        self._check_context(context, batch)
        projected = self.context_emb(context.to(self.context_emb.weight.dtype))
        if empty is None:
            return projected
        empty = self._flags(empty, batch, "empty", projected.device)
        return torch.where(empty[:, None], self._empty(batch), projected)

    # ------------------------------------------------------------------ forward

    def _eps(self, sample: torch.Tensor, t: torch.Tensor, projected: torch.Tensor,
             pair: PairMode | None) -> torch.Tensor:
        t_emb = self.time_emb(t)
        h = self.image_proj(sample.to(self.image_proj.weight.dtype))
        skips = [h]
        for module in self.down:
            h = module(h, t_emb, projected, pair)
            skips.append(h)
        h = self.middle(h, t_emb, projected, pair)
        for module in self.up:
            if not isinstance(module, Upsample):
                h = torch.cat([h, skips.pop()], dim=1)
            h = module(h, t_emb, projected, pair)
        return self.final(F.silu(self.norm(h)))

    def forward(self, sample: torch.Tensor, timestep, context: torch.Tensor | None = None, *,
                empty: torch.Tensor | None = None) -> torch.Tensor:
        """eps for (B, 3, H, W) latents.

        Args:
            sample: (B, 3, H, W) latents, H and W multiples of `downscale`.
            timestep: int, 0-d or (B,) tensor of integer steps 0..999 (cast to float inside, as the original).
            context: (B, 512) L2-normalised ElasticFace embeddings, or None: every row gets the empty context.
            empty: optional (B,) bool: rows whose projected context is replaced by the empty embedding.
        """
        self._check_sample(sample)
        batch = sample.shape[0]
        t = self._timesteps(timestep, batch, sample.device)
        return self._eps(sample, t, self._projected(context, empty, batch), None)

    def forward_pair(self, sample: torch.Tensor, timestep, context: torch.Tensor, *, use_context,
                     restandardise: bool, return_cross: bool = False):
        """UIFace's two passes of one step as ONE forward over 2B rows.

        Rows [0, B) are pass A (the empty context everywhere); rows [B, 2B) are pass B: `context` where
        `use_context` is True, the empty embedding elsewhere. In every attention block B's self-attention
        applies softmax(A's pre-softmax self logits) to B's own values; with `restandardise`, B's cross logits
        are re-standardised per query row to the mean of A's and B's means and stds over the keys (unbiased).

        Args:
            sample: (B, 3, H, W) latents; timestep as in `forward` (the same t for both passes).
            context: (B, 512) L2-normalised ElasticFace embeddings.
            use_context: (B,) bool (or one bool): rows of pass B that get the identity.
            restandardise: UIFace stage 2's cross-logit blend.
            return_cross: also return B's cross logits as used for the softmax.

        Returns:
            (eps_A, eps_B, cross): cross is None unless `return_cross`, then one (B, heads, HW, tokens) tensor
            per attention block in network order.
        """
        self._check_sample(sample)
        batch = sample.shape[0]
        t = self._timesteps(timestep, batch, sample.device)
        self._check_context(context, batch)
        use = self._flags(use_context, batch, "use_context", sample.device)
        projected_b = self._projected(context, ~use, batch)
        pair = PairMode(half=batch, restandardise=bool(restandardise), cross=[] if return_cross else None)
        eps = self._eps(torch.cat([sample, sample]), torch.cat([t, t]),
                        torch.cat([self._empty(batch), projected_b]), pair)
        return eps[:batch], eps[batch:], pair.cross
