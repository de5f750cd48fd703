"""The attention block of IDiff-Face's UNet (labml-style "ConditionalUNet", condition type "CA"),
with UIFace's logit export and injection, written from IDIFF.md (no published code is used).

One block (C channels, head width 32, so C / 32 heads; state-dict names as published):

- `x_proj_in` (1x1 conv, no norm before it) turns the map into tokens (B, C, HW);
- the block's own context tokens: `c_proj_in` (Linear 256 -> 256 x 32) reshaped channel-major to
  (B, 256, 32), then `c_norm` (GroupNorm, 32 groups);
- one GroupNorm `x_norm` used three times with the same parameters: h += self-attention(x_norm(h));
  h += cross-attention(x_norm(h), tokens); h += ff(x_norm(h)) (Linear C -> 4C, erf GELU, Linear 4C -> C,
  per position);
- `x_proj_out` (1x1 conv, zero-initialised), then the block input is added.

`Attention` uses Conv1d k=1 projections with bias; heads are contiguous slices of `head_dim`
channels; q and k are each scaled by head_dim^(-1/4); the softmax over keys runs in float32.

UIFace's two passes of one step run as one batch of 2B rows (`PairMode`): rows [0, B) are pass A,
rows [B, 2B) pass B. B's self-attention applies softmax(A's logits) to B's own values; B's cross
logits may be re-standardised per query row towards A's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

GN_GROUPS = 32
GN_EPS = 1e-5


@dataclass
class PairMode:
    """How one batched forward of 2B rows couples pass B (rows [half, 2 half)) to pass A (rows [0, half)).

    restandardise: B's cross logits get, per query row, the mean (mu_A + mu_B) / 2 and the std
    (sd_A + sd_B) / 2 of A's and B's own cross logits over the keys (std unbiased).
    cross: when not None, each attention block appends B's cross logits as used for the softmax.
    """

    half: int
    restandardise: bool = False
    cross: list[torch.Tensor] | None = field(default=None)


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    b, c, n = x.shape
    return x.reshape(b, c // head_dim, head_dim, n)


def _row_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std over the keys (last axis), kept for broadcasting."""
    return logits.mean(dim=-1, keepdim=True), logits.std(dim=-1, keepdim=True)


def restandardised(logits_b: torch.Tensor, logits_a: torch.Tensor) -> torch.Tensor:
    """B's logits standardised per query row with their own mean and std over the keys (unbiased),
    then given the mean of A's and B's means and the mean of A's and B's stds (UIFace stage 2)."""
    mu_a, sd_a = _row_stats(logits_a)
    mu_b, sd_b = _row_stats(logits_b)
    return (logits_b - mu_b) / sd_b * ((sd_a + sd_b) / 2) + (mu_a + mu_b) / 2


class Attention(nn.Module):
    """Multi-head attention over (B, C, N) queries and (B, C_kv, M) keys/values, Conv1d projections."""

    def __init__(self, channels: int, context_channels: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.scale = head_dim ** -0.25
        self.to_q = nn.Conv1d(channels, channels, 1)
        self.to_k = nn.Conv1d(context_channels, channels, 1)
        self.to_v = nn.Conv1d(context_channels, channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def logits(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Pre-softmax logits (B, heads, N, M): (q d^-1/4) . (k d^-1/4), q from x, k from context."""
        q = _split_heads(self.to_q(x) * self.scale, self.head_dim)
        k = _split_heads(self.to_k(context) * self.scale, self.head_dim)
        return torch.einsum("bhdn,bhdm->bhnm", q, k)

    def attend(self, logits: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """softmax(logits) over the keys (float32) applied to context's values, then `proj_out`."""
        v = _split_heads(self.to_v(context), self.head_dim)
        weights = logits.float().softmax(dim=-1).to(v.dtype)
        out = torch.einsum("bhnm,bhdm->bhdn", weights, v)
        return self.proj_out(out.reshape(out.shape[0], -1, out.shape[-1]))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(self.logits(x, context), context)


class AttentionBlock(nn.Module):
    """Self-attention, cross-attention to the block's own context tokens, feed-forward (see module doc)."""

    def __init__(self, channels: int, head_dim: int, projected_context_dim: int, context_tokens: int):
        super().__init__()
        self.context_tokens = context_tokens
        self.x_proj_in = nn.Conv2d(channels, channels, 1)
        self.x_proj_out = nn.Conv2d(channels, channels, 1)
        self.self_attention = Attention(channels, channels, head_dim)
        self.c_proj_in = nn.Linear(projected_context_dim, projected_context_dim * context_tokens)
        self.cross_attention = Attention(channels, projected_context_dim, head_dim)
        self.x_norm = nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)
        self.c_norm = nn.GroupNorm(GN_GROUPS, projected_context_dim, eps=GN_EPS)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        nn.init.zeros_(self.x_proj_out.weight)
        nn.init.zeros_(self.x_proj_out.bias)

    def tokens(self, projected_context: torch.Tensor) -> torch.Tensor:
        """(B, 256) projected context -> (B, 256 channels, 32 tokens), channel index major, `c_norm`ed."""
        b, d = projected_context.shape
        return self.c_norm(self.c_proj_in(projected_context).reshape(b, d, self.context_tokens))

    def _self(self, h: torch.Tensor, pair: PairMode | None) -> torch.Tensor:
        attn = self.self_attention
        if pair is None:
            return attn(h, h)
        a = h[: pair.half]
        logits_a = attn.logits(a, a)  # B's own self logits are never used: B reads A's
        return attn.attend(torch.cat([logits_a, logits_a]), h)

    def _cross(self, h: torch.Tensor, tokens: torch.Tensor, pair: PairMode | None) -> torch.Tensor:
        attn = self.cross_attention
        logits = attn.logits(h, tokens)
        if pair is not None:
            logits_a, logits_b = logits[: pair.half], logits[pair.half:]
            if pair.restandardise:
                logits_b = restandardised(logits_b.float(), logits_a.float()).to(logits.dtype)
                logits = torch.cat([logits_a, logits_b])
            if pair.cross is not None:
                pair.cross.append(logits_b)
        return attn.attend(logits, tokens)

    def forward(self, x: torch.Tensor, projected_context: torch.Tensor, pair: PairMode | None = None) -> torch.Tensor:
        """x (B, C, H, W), projected_context (B, 256) -> (B, C, H, W)."""
        b, c, height, width = x.shape
        tokens = self.tokens(projected_context)
        h = self.x_proj_in(x).reshape(b, c, height * width)
        h = h + self._self(self.x_norm(h), pair)
        h = h + self._cross(self.x_norm(h), tokens, pair)
        h = h + self.ff(self.x_norm(h).transpose(1, 2)).transpose(1, 2)
        return self.x_proj_out(h.reshape(b, c, height, width)) + x

