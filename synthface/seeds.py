"""Seeds and named random streams: the home of determinism.

Every random draw in synthface comes from a seed derived from its purpose, never from a shared
generator drawn sequentially, so a result depends only on its own arguments (not on shard size,
rank count, order or interruptions). Each purpose has a stream number of its own, declared here
once, so that e.g. the perturbation noise for seed s is never the very draw that produced the
identity vectors for seed s, and adding a new kind of draw changes no existing one. The numbers
are part of every dataset's bytes: never change one.
"""

from __future__ import annotations

import numpy as np

# --- identity banks (synthface.identity): stream_rng(seed, STREAM, ...)
SAMPLE_STREAM = 0x5A  # candidate draws of sample_identities
PERTURB_STREAM = 0x9E  # the orthogonal noise direction of perturb
MIXTURE_STREAM = 0x3C  # the shuffled order of mixture_cosines' target cosines
PROBE_STREAM = 0x71  # the plain draws that judge thresholds when sampling proves infeasible
REPLACE_STREAM = 0xD7  # draw_replacements' candidates, per (seed, stream, round, row)
BOUNDED_STREAM = 0xB5  # bounded_cosines' uniform draw s of an image's target cosine in [lb, max_cos]

# --- the engine (synthface.engine): mixed into derive_seed(recipe seed, ..., STREAM)
IMAGE_MIXTURE_STREAM = 0x6D6978  # ("mix") an identity's target cosines in one rendering round
POSE_STREAM = 0x706F7365  # ("pose") an image's target (yaw, pitch)
ATTROP_STREAM = 0x617474  # ("att") an identity's AttrOP mask draws

# --- reports (synthface.report.metrics): np.random.default_rng([seed, STREAM])
GENUINE_PAIRS_STREAM = 1  # which same-identity pairs are scored when there are too many
IMPOSTOR_ROWS_STREAM = 2  # which images the impostor (different-identity) scores are sampled from

# --- training (synthface.fr.data): np.random.default_rng((seed, epoch, STREAM))
EPOCH_ORDER_STREAM = 0x5EED  # the sample order of one training epoch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. recipe seed, identity, image)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def stream_rng(seed: int, stream: int, *parts: int) -> np.random.Generator:
    """A numpy generator (PCG64) seeded by (seed, stream, *parts) alone."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream, *(int(p) for p in parts)])))
