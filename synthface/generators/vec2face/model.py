"""The Vec2Face generator as plain torch modules whose state-dict names are the published ones.

Vec2Face (Wu et al., ICLR 2025) maps a raw 512-d ArcFace feature to a 112x112 face in one forward
pass: a MAGE-style masked ViT over 49 "feature tokens" (12 encoder blocks, 8 decoder blocks) and a
cut-down VQGAN decoder. Written from the description in the project's VEC2FACE.md; no code of
either published repository is used. Loading a published checkpoint is the identity map on names
with `strict=True`, once the three unused entries (`patch_embed.proj.*`, `center_token.*`,
`token_emb.position_ids`) are dropped.

Vec2Face+ adds LoRA adapters on every attention's `qkv` and `proj` (`LoRALinear`, names
`.base.weight`, `.base.bias`, `.A`, `.B`) and a pose-condition model (`PoseConditionModel`) whose
token fills the masked positions of the decoder.

Faithfulness notes (each matches the published model's numerics, not a textbook layer):
attention scores are `q.float() @ k.float().T * scale` with the row maximum subtracted before the
softmax; ResnetBlock convolutions have no bias; where channels change, the 1x1 `nin_shortcut`
acts on the residual branch and the block returns `nin_shortcut(h) + h` (no skip from its input);
the decoder's nonlinearity is `x * sigmoid(x)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from synthface.errors import InvalidInputError

#: State-dict entries of the published checkpoints that inference never reads; dropped by name.
UNUSED_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "center_token.weight", "center_token.bias",
               "token_emb.position_ids")
LN_EPS = 1e-6
GN_EPS = 1e-6
GN_GROUPS = 32
ATTENTION_MODES = ("exact", "sdpa")


class LoRALinear(nn.Module):
    """`base(x) + scaling * (x @ A.T) @ B.T`: Vec2Face+'s adapter, kept separate (see `merged`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.zeros(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t()) @ self.B.t() * self.scaling

    def merged(self) -> nn.Linear:
        """One Linear with weight `W + scaling * B @ A` (computed in float32): same output, one GEMM."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, device=self.A.device, dtype=self.A.dtype)
        delta = (self.B.float() @ self.A.float()) * self.scaling
        with torch.no_grad():
            linear.weight.copy_((self.base.weight.float() + delta).to(linear.weight.dtype))
            linear.bias.copy_(self.base.bias)
        return linear


class Attention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection (bias) and an output `proj`.

    `mode="exact"` computes the scores as the published model does (float32 products, row maximum
    subtracted, softmax); `mode="sdpa"` uses `F.scaled_dot_product_attention` (faster on GPUs;
    differs by rounding only).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise InvalidInputError(f"Attention width {dim} is not divisible by {num_heads} heads.")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.mode = "exact"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.mode == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q.float() @ k.float().transpose(-2, -1)) * self.scale
            scores = scores - scores.amax(dim=-1, keepdim=True)
            out = scores.softmax(dim=-1).to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenEmbedding(nn.Module):
    """Learned position embeddings added to given token vectors, then LayerNorm (MAGE's embedding
    without its word table). Positions are 0..L-1; the published `position_ids` buffer is that range."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(num_positions, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(tokens + self.position_embeddings.weight[: tokens.shape[1]])


def swish(x: torch.Tensor) -> torch.Tensor:
    """`x * sigmoid(x)`, as the published decoder computes it (`F.silu` differs by ~3e-5)."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GroupNorm, swish, conv3x3 (no bias), twice. Same channels: `x + h`. Channels change: the
    published quirk `nin_shortcut(h) + h`, a bias-free 1x1 conv on the residual branch itself."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, in_channels, eps=GN_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(GN_GROUPS, out_channels, eps=GN_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            return self.nin_shortcut(h) + h
        return x + h


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution with bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels)
                                   for i in range(num_blocks))
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h)
        return h if self.upsample is None else self.upsample(h)


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(h))


class ImageDecoder(nn.Module):
    """VQGAN-style decoder without attention or timestep embedding: (B, z, 7, 7) -> (B, 3, 112, 112).

    Level i (0 = finest) has `channels * channel_multipliers[i]` channels; levels run from the
    coarsest down, each but level 0 ending with an x2 upsample.
    """

    def __init__(self, z_channels: int, channels: int, channel_multipliers: tuple[int, ...], num_res_blocks: int,
                 out_channels: int = 3):
        super().__init__()
        widths = [channels * m for m in channel_multipliers]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, 1, 1)
        self.mid = MidBlock(widths[-1])
        levels = []
        block_in = widths[-1]
        for i in reversed(range(len(widths))):
            levels.insert(0, UpLevel(block_in, widths[i], num_res_blocks, upsample=i != 0))
            block_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(GN_GROUPS, widths[0], eps=GN_EPS)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class PoseConditionModel(ModelMixin, ConfigMixin):
    """Vec2Face+'s pose condition: a (B, 3, 112, 112) landmark image in [-1, 1] -> a (B, 1, D) token.

    Four stride-2 3x3 convolutions with ReLU (3 -> 32 -> 64 -> 128 -> 256, 112 -> 7), flattened
    channel-major, then `linear` to the decoder width.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, dim: int = 768, image_size: int = 112):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 2, 1)
        self.conv3 = nn.Conv2d(64, 128, 3, 2, 1)
        self.conv4 = nn.Conv2d(128, 256, 3, 2, 1)
        side = image_size // 16
        self.linear = nn.Linear(256 * side * side, dim)

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        x = landmarks
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        return self.linear(x.flatten(1))[:, None, :]


class Vec2FaceModel(ModelMixin, ConfigMixin):
    """Vec2Face's generator: raw ID features (B, rep_dim) + token masks -> (B, 3, 112, 112) in ~[-1, 1].

    The defaults are the published `vec2face_vit_base_patch16` (174,126,998 parameters with the
    unused entries, 49.2 GFLOP per image); `lora_rank > 0` wraps every attention's `qkv` and `proj`
    as Vec2Face+'s pose checkpoint does (rank 8, alpha 32).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        rep_dim: int = 512,
        grid: int = 7,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 768,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        decoder_channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        lora_rank: int = 0,
        lora_alpha: float = 32.0,
    ):
        super().__init__()
        if embed_dim != decoder_embed_dim:
            raise InvalidInputError("Vec2Face's token 0 fills masked decoder positions, so the widths must match.")
        tokens = grid * grid
        self.latent_prior_proj_f = nn.Linear(rep_dim, embed_dim)
        self.feature_token = nn.Linear(1, tokens)
        self.token_emb = TokenEmbedding(tokens + 1, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, tokens + 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=LN_EPS)
        self.im_decoder_proj = nn.Linear(decoder_embed_dim, z_channels)
        self.im_decoder = ImageDecoder(z_channels, decoder_channels, tuple(channel_multipliers), num_res_blocks)
        if lora_rank:
            for block in self.attention_blocks():
                block.attn.qkv = LoRALinear(block.attn.qkv, lora_rank, lora_alpha)
                block.attn.proj = LoRALinear(block.attn.proj, lora_rank, lora_alpha)

    @property
    def num_tokens(self) -> int:
        return self.config.grid ** 2

    def attention_blocks(self) -> list[Block]:
        return [*self.blocks, *self.decoder_blocks]

    def set_attention(self, mode: str) -> None:
        """"exact" (the published arithmetic, default) or "sdpa" (fused kernels; rounding differs)."""
        if mode not in ATTENTION_MODES:
            raise InvalidInputError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}.")
        for block in self.attention_blocks():
            block.attn.mode = mode

    def merge_lora(self) -> None:
        """Fold every LoRA adapter into its Linear (state-dict names become the plain ones)."""
        for block in self.attention_blocks():
            for name in ("qkv", "proj"):
                layer = getattr(block.attn, name)
                if isinstance(layer, LoRALinear):
                    setattr(block.attn, name, layer.merged())
        self.register_to_config(lora_rank=0)

    def forward(self, rep: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        """Render (B, 3, 112, 112) images from raw ID features.

        Args:
            rep: (B, rep_dim) ID features at the scale the model was trained on (norm ~22).
            mask: (B, 49) bool, the masked feature tokens (replaced by the projected feature).
            drop: (B, 49) bool, a subset of `mask` with the same count in every row: tokens the
                encoder never sees.
            condition: optional (B, 1, D) pose token (Vec2Face+); it replaces `decoder_embed`'s
                output at every masked position and `decoder_embed` is skipped.
        """
        b = rep.shape[0]
        f = self.latent_prior_proj_f(rep)
        tokens = self.feature_token(f[:, :, None]).transpose(1, 2)
        tokens = torch.where(mask[..., None], f[:, None, :], tokens)
        x = self.token_emb(torch.cat([f[:, None, :], tokens], dim=1))
        never = torch.zeros(b, 1, dtype=torch.bool, device=mask.device)
        keep = ~torch.cat([never, drop], dim=1)
        x = x[keep].reshape(b, -1, x.shape[-1])
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)

        if condition is None:
            x = self.decoder_embed(x)
            fill = x[:, :1]
        else:
            fill = condition.to(x.dtype)
        padded = fill.expand(b, keep.shape[1], x.shape[-1]).clone()
        padded[keep] = x.reshape(-1, x.shape[-1])
        masked = torch.cat([never, mask], dim=1)
        x = torch.where(masked[..., None], fill, padded) + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        z = self.im_decoder_proj(x[:, 1:])
        g = self.config.grid
        z = z.reshape(b, g, g, -1).permute(0, 3, 1, 2)
        return self.im_decoder(z)


def masks_from_noise(noise: torch.Tensor, num_masked: torch.Tensor, num_dropped: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, drop) from one noise row per image: the `num_masked[i]` smallest values of row i are
    masked and the `num_dropped` smallest dropped (ties by position), so drop is a subset of mask."""
    rank = noise.argsort(dim=1).argsort(dim=1)
    mask = rank < num_masked.to(rank.device)[:, None]
    return mask, rank < num_dropped


def token_count(rate: float, tokens: int) -> int:
    """ceil(tokens * rate), as the published code counts masked and dropped tokens."""
    return int(math.ceil(tokens * rate))
