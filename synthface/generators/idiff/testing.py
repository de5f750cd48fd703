"""IDiff-Face test helpers: the published architecture with IDIFF.md's deterministic weights (the
golden-value models). The tiny models and the fill are `tiny`; the rule is
`synthface.generators.testing.deterministic_state_dict`.
"""

from __future__ import annotations

from synthface.generators.idiff.tiny import unet_from_rule, vq_from_rule


def full_size_unet(learn_empty_context: bool = True):
    """The published UNet (216,341,443 parameters; 216,341,187 with `learn_empty_context=False`) with the
    deterministic weights: IDIFF.md's golden-value model. Its output is not a denoiser's."""
    return unet_from_rule(learn_empty_context)


def full_size_vqmodel():
    """The published VQ-f4 first stage (encoder 22,337,423 + decoder and codebook 32,985,359 parameters)
    with the deterministic weights keyed by the original LDM names: IDIFF.md's "Decoder alone" model."""
    return vq_from_rule()
