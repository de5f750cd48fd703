"""Seeds: derived seeds and the named streams are part of every dataset's bytes, so they are pinned."""

from __future__ import annotations

import numpy as np

from synthface import seeds


def test_derive_seed_is_pinned_and_63_bit():
    words = np.random.SeedSequence([1, 2, 3]).generate_state(2, dtype=np.uint32)
    assert seeds.derive_seed(1, 2, 3) == (int(words[0]) << 31) ^ int(words[1])
    assert 0 <= seeds.derive_seed(2**40, 7) < 2**63
    assert seeds.derive_seed(1, 2) != seeds.derive_seed(2, 1)


def test_streams_are_pinned_and_distinct():
    streams = {name: value for name, value in vars(seeds).items() if name.endswith("_STREAM")}
    assert streams == {
        "SAMPLE_STREAM": 0x5A, "PERTURB_STREAM": 0x9E, "MIXTURE_STREAM": 0x3C, "PROBE_STREAM": 0x71,
        "REPLACE_STREAM": 0xD7, "BOUNDED_STREAM": 0xB5, "IMAGE_MIXTURE_STREAM": 0x6D6978, "POSE_STREAM": 0x706F7365,
        "ATTROP_STREAM": 0x617474, "GENUINE_PAIRS_STREAM": 1, "IMPOSTOR_ROWS_STREAM": 2, "EPOCH_ORDER_STREAM": 0x5EED,
    }
    assert len(set(streams.values())) == len(streams)


def test_stream_rng_draws_from_seed_stream_and_parts_alone():
    want = np.random.Generator(np.random.PCG64(np.random.SeedSequence([5, seeds.REPLACE_STREAM, 1, 9])))
    assert np.array_equal(seeds.stream_rng(5, seeds.REPLACE_STREAM, 1, 9).random(4), want.random(4))
    assert not np.array_equal(seeds.stream_rng(5, seeds.SAMPLE_STREAM).random(4), seeds.stream_rng(5, seeds.PERTURB_STREAM).random(4))
