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

