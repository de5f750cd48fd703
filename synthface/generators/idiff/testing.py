"""IDiff-Face test helpers: the published architecture with IDIFF.md's deterministic weights (the
golden-value models). The tiny models and the fill are `tiny`; the rule is
`synthface.generators.testing.deterministic_state_dict`.
"""

from __future__ import annotations

from synthface.generators.idiff.tiny import unet_from_rule


def full_size_unet(learn_empty_context: bool = True):
    """The published UNet (216,341,443 parameters; 216,341,187 with `learn_empty_context=False`) with the
    deterministic weights: IDIFF.md's golden-value model. Its output is not a denoiser's."""
    return unet_from_rule(learn_empty_context)

