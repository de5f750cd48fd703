"""IDiff-Face's tiny models: the published architecture at a few channels, filled by the shared
deterministic weight rule (`synthface.generators.testing.deterministic_state_dict`), for tests and
smoke runs. Their output is not a face.
"""

from __future__ import annotations

import torch

from synthface.generators.testing import deterministic_state_dict

#: The tiny UNet: two levels (32 and 64 channels; attention only at level 1, 16-channel heads, so 4 heads
#: and 2 in the channel-reducing up block), one block per level, a 64-d projected context with 4 tokens.
#: Every code path of the published model (skip stack, down/up sampling, the reducing attention block,
#: blocks without attention, middle) is covered; latents must be multiples of 2 px.
TINY_UNET = dict(initial_channels=32, channel_multipliers=(1, 2), is_attention=(False, True), n_blocks=1, head_dim=16,
                 projected_context_dim=64, context_tokens=4)


def filled(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with its state dict replaced by the deterministic rule (strict, assign: works on meta), in eval."""
    module.load_state_dict(deterministic_state_dict(module), strict=True, assign=True)
    return module.eval()


def unet_from_rule(learn_empty_context: bool = True, **config):
    """An `IDiffUNet(**config)` built on meta and filled by the deterministic rule (fast at any size); the
    IDiff-Face variant's zero empty context (a non-persistent buffer) is made real on the CPU."""
    from synthface.generators.idiff.unet import IDiffUNet

    with torch.device("meta"):
        unet = IDiffUNet(**config, learn_empty_context=learn_empty_context)
    unet = filled(unet)
    if not learn_empty_context:
        unet.empty_context_embedding = torch.zeros(unet.config.projected_context_dim)
    return unet


def tiny_unet(learn_empty_context: bool = True):
    """An `IDiffUNet` at `TINY_UNET` size with deterministic weights (`learn_empty_context=False`: the
    IDiff-Face variant, zero empty context)."""
    return unet_from_rule(learn_empty_context, **TINY_UNET)


#: The tiny first stage: VQ-f4's block types (three levels, so f = 4; mid attention), 16/32/32 channels in
#: 8 GroupNorm groups, one residual block per level, 3-d latents and 16 codes.
TINY_VQ = dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, num_vq_embeddings=16,
               sample_size=32)


def vq_from_rule(**overrides):
    """An `idiff_vqmodel(**overrides)` built on meta and filled by the deterministic rule applied to the
    original LDM names and shapes (as IDIFF.md's golden values were made), then renamed to VQModel's."""
    from synthface.generators.idiff.autoencoder import idiff_vqmodel, vq_state_from_ldm, vq_state_to_ldm

    with torch.device("meta"):
        vq = idiff_vqmodel(**overrides)
    ldm_shapes = {k: v.shape for k, v in vq_state_to_ldm(vq.state_dict()).items()}
    vq.load_state_dict(vq_state_from_ldm(deterministic_state_dict(ldm_shapes)), strict=True, assign=True)
    return vq.eval()


def tiny_vqmodel():
    """A `VQModel` at `TINY_VQ` size (f = 4, 3-d latents, 16 codes) with deterministic weights."""
    return vq_from_rule(**TINY_VQ)
