"""IDiff-Face's first stage, the LDM FFHQ VQ-f4 autoencoder, as a diffusers `VQModel`.

The published files hold the original (LDM) names: the decoder file `decoder.*`,
`quantize.embedding.weight` (8192 x 3) and `post_quant_conv.*`; the encoder file `encoder.*` and
`quant_conv.*`. `vq_state_from_ldm` renames either file (or both) to VQModel's names and
`vq_state_to_ldm` is the inverse. There is no scale factor: the diffusion model works on
`quant_conv(encoder(x))` as it is (`VQ_CONFIG` sets `scaling_factor=1.0`).

Sampling decodes with quantisation (`decode_latents`): each latent pixel goes to its nearest code by
|z|^2 + |e|^2 - 2 z.e (argmin, the first index on ties; VQModel's own `decode` uses `cdist`, which can
differ at near-ties), keeps the straight-through value z + (e - z), then `post_quant_conv` and the
decoder; the result is unclamped, nominally [-1, 1].
"""

from __future__ import annotations

import re

import torch

from synthface.errors import FileFormatError, InvalidInputError

#: diffusers VQModel kwargs of the LDM FFHQ VQ-f4 first stage (IDIFF.md; f = 4: 128 px <-> 3x32x32).
VQ_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 512), layers_per_block=2, act_fn="silu", latent_channels=3,
    sample_size=128, num_vq_embeddings=8192, norm_num_groups=32, vq_embed_dim=3, scaling_factor=1.0,
)

_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTENTION_BACK = {v: k for k, v in _ATTENTION.items()}
_PLAIN = ("quant_conv.", "post_quant_conv.", "quantize.embedding.weight")
_SAME = ("conv_in.", "conv_out.")


def idiff_vqmodel(**overrides):
    """A diffusers `VQModel` with `VQ_CONFIG` (random init), `overrides` replacing entries (tiny sizes)."""
    from diffusers import VQModel

    return VQModel(**{**VQ_CONFIG, **overrides})


def _levels(keys, pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def _rename_part(rest: str, levels: int) -> str | None:
    """LDM encoder/decoder-relative name -> VQModel's, or None when it is not a known name."""
    if rest.startswith(_SAME):
        return rest
    if rest.startswith("norm_out."):
        return "conv_norm_out." + rest[len("norm_out."):]
    rest = rest.replace(".nin_shortcut.", ".conv_shortcut.")
    if m := re.fullmatch(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest):
        return f"down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.(.+)", rest):
        return f"down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    if m := re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", rest):
        return f"up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.(.+)", rest):
        return f"up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    if m := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        return f"mid_block.resnets.{int(m[1]) - 1}.{m[2]}"
    if (m := re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)):
        return f"mid_block.attentions.0.{_ATTENTION[m[1]]}.{m[2]}"
    return None


def _unrename_part(rest: str, levels: int) -> str | None:
    """VQModel encoder/decoder-relative name -> LDM's, or None when it is not a known name."""
    if rest.startswith(_SAME):
        return rest
    if rest.startswith("conv_norm_out."):
        return "norm_out." + rest[len("conv_norm_out."):]
    rest = rest.replace(".conv_shortcut.", ".nin_shortcut.")
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
        return f"down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest):
        return f"mid.block_{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest):
        return f"mid.attn_1.{_ATTENTION_BACK[m[1]]}.{m[2]}"
    return None


def _convert(state: dict, rename, pattern: str, reshape, what: str) -> dict:
    levels = _levels(state, pattern)
    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith(_PLAIN):
            out[key] = value
            continue
        part, _, rest = key.partition(".")
        new = rename(rest, levels) if part in ("encoder", "decoder") else None
        if new is None:
            unknown.append(key)
            continue
        out[f"{part}.{new}"] = reshape(new, value)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise FileFormatError(
            f"{len(unknown)} entries of the first-stage state dict are not {what} names: {shown}. The VQ-f4 files "
            "hold encoder.*, quant_conv.* (encoder file) and decoder.*, quantize.embedding.weight, post_quant_conv.* "
            "(decoder file); pass those state dicts as loaded (without a wrapper prefix such as 'first_stage_model.').")
    return out


def vq_state_from_ldm(state: dict) -> dict:
    """LDM VQ-f4 names (`encoder.*`, `quant_conv.*`, `decoder.*`, `quantize.embedding.weight`,
    `post_quant_conv.*`; either file alone or both) -> diffusers VQModel names; the mid attention's 1x1
    conv weights become Linear weights. Unknown keys: a FileFormatError listing them."""

    def reshape(new, value):
        if ".attentions.0." in new and new.endswith("weight") and value.ndim == 4:
            return value.reshape(value.shape[0], value.shape[1])
        return value

    return _convert(state, _rename_part, r"decoder\.up\.(\d+)\.", reshape, "LDM VQ-f4")


def vq_state_to_ldm(state: dict) -> dict:
    """The inverse of `vq_state_from_ldm`: VQModel names -> LDM names, Linear attention weights back to
    1x1 conv weights (what the published files hold)."""

    def reshape(new, value):
        if ".attn_1." in new and new.endswith("weight") and not new.endswith("norm.weight") and value.ndim == 2:
            return value.reshape(*value.shape, 1, 1)
        return value

    return _convert(state, _unrename_part, r"decoder\.up_blocks\.(\d+)\.", reshape, "diffusers VQModel")


def _check_latents(vq, latents) -> None:
    channels = vq.config.vq_embed_dim or vq.config.latent_channels
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != channels \
            or not latents.is_floating_point():
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InvalidInputError(
            f"The VQ-f4 first stage decodes floating-point (batch, {channels}, height, width) latents (3x32x32 for "
            f"a 128x128 face), got {got}; pass the sampler's latents as they are (no scale factor).")


def quantise(vq, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(straight-through quantised latents z + (e - z), code indices (B, H, W)): each pixel's nearest code
    by |z|^2 + |e|^2 - 2 z.e in float32, argmin with the first index on ties. One image at a time, so an
    image's codes never depend on its batch-mates."""
    _check_latents(vq, latents)
    codes = vq.quantize.embedding.weight.float()
    code_norms = (codes ** 2).sum(dim=1)
    b, c, h, w = latents.shape
    flat = latents.float().permute(0, 2, 3, 1).reshape(b, h * w, c)
    indices = torch.stack([
        ((z ** 2).sum(dim=1, keepdim=True) + code_norms - 2 * (z @ codes.t())).argmin(dim=1) for z in flat])
    chosen = codes[indices].reshape(b, h, w, c).permute(0, 3, 1, 2).to(latents.dtype)
    return latents + (chosen - latents), indices.reshape(b, h, w)


def decode_latents(vq, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) latents -> raw (B, 3, 4H, 4W) images, nominally [-1, 1] and unclamped: quantise
    (`quantise`), `post_quant_conv`, decoder, as IDiff-Face's samplers decode."""
    quantised, _ = quantise(vq, latents)
    dtype = vq.post_quant_conv.weight.dtype
    return vq.decoder(vq.post_quant_conv(quantised.to(dtype)))
