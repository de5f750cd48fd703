"""fr.benchmarks.embeddings: flip sums equal an independent loop, the cache pays only for new items and
survives damage, model keys change with the bytes."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import FileFormatError
from synthface.fr.benchmarks.embeddings import EmbeddingCache, embed, model_key
from synthface.fr.benchmarks.recognizers import Recognizer


def _recognizer(calls: list[int]) -> Recognizer:
    weights = np.random.default_rng(1).standard_normal((4 * 4 * 3, 8)).astype(np.float32)

    def forward(crops):
        calls.append(len(crops))
        return crops.reshape(len(crops), -1).astype(np.float32) @ weights

    return Recognizer(forward, 4, "toy")


def test_flip_sum_chunks_and_cache(tmp_path):
    crops = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    calls: list[int] = []
    rec = _recognizer(calls)
    keys = [f"img{i}.jpg" for i in range(10)]
    seen = []
    got = embed(rec, lambda i: crops[i], keys, cache=EmbeddingCache(tmp_path, benchmark="t", model_key="m"),
                chunk=4, progress=seen.append)
    expected = rec.forward(crops) + rec.forward(np.ascontiguousarray(crops[:, :, ::-1]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert seen == [4, 4, 2]
    calls.clear()
    again = embed(rec, lambda i: crops[i], [*keys, "new.jpg"][1:] + ["img0.jpg"],
                  cache=EmbeddingCache(tmp_path, benchmark="t", model_key="m"), progress=seen.append)
    # only new.jpg is embedded (twice: the image and its mirror), the rest come from the cache
    assert calls == [1, 1] and np.array_equal(again[:9], got[1:]) and np.array_equal(again[-1], got[0])
    plain = embed(rec, lambda i: crops[i], keys, flip=False)
    np.testing.assert_allclose(plain, rec.forward(crops), rtol=1e-6)


def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path):
    crops = np.zeros((2, 4, 4, 3), np.uint8)
    cache = EmbeddingCache(tmp_path, benchmark="t", model_key="m")
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(b"not an npz")
    assert len(EmbeddingCache(tmp_path, benchmark="t", model_key="m")) == 0
    embed(_recognizer([]), lambda i: crops[i], ["a", "b"], cache=EmbeddingCache(tmp_path, benchmark="t", model_key="m"))
    assert len(EmbeddingCache(tmp_path, benchmark="t", model_key="m")) == 2


def test_non_finite_embeddings_name_the_item():
    rec = Recognizer(lambda c: np.full((len(c), 2), np.nan, np.float32), 4, "broken")
    with pytest.raises(FileFormatError, match="non-finite embedding.*face faces/3.jpg"):
        embed(rec, lambda i: np.zeros((len(i), 4, 4, 3), np.uint8), ["faces/3.jpg"], what="face")


def test_model_key_follows_the_bytes(tmp_path):
    a = tmp_path / "a.onnx"
    a.write_bytes(b"one")
    first = model_key(a)
    assert model_key(a) == first and model_key(a, "112") != first
    a.write_bytes(b"two")
    assert model_key(a) != first
