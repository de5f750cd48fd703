"""Embeddings for every protocol: batched through a `Recognizer`, flip-summed, checked finite, and cached
per benchmark and model so a rerun (or a second model on the same folder) pays only for what changed.

    cache = EmbeddingCache(root, benchmark="ijbc", model_key=model_key(path))   # or None: no cache
    raw = embed(recognizer, load_crops, keys, flip=True, cache=cache, progress=bar)

`load_crops(indices)` returns the aligned uint8 RGB crops (n, S, S, 3) of those items, in that order;
`keys` names every item stably (a file's relative path plus what its crop depends on: size, mtime,
landmarks), so an item whose file changed is embedded again. The result is raw (not normalised):
f(x) + f(mirror(x)) with `flip`, f(x) without; protocols normalise (or keep norms) as they define.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError
from synthface.fr.benchmarks.recognizers import Recognizer

#: Items embedded per recogniser call (and per progress update).
CHUNK = 256


def model_key(source: str | os.PathLike, *extra: str) -> str:
    """A short key for a model file (or every file of a folder): sha256 of the bytes, plus `extra`
    (settings that change embeddings, e.g. the input size)."""
    digest = hashlib.sha256()
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for item in extra:
        digest.update(str(item).encode())
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """Raw embeddings of one benchmark under one model, by item key, in `<root>/<benchmark>/<model_key>.npz`.

    Written atomically after each `embed` (a killed run loses at most that call's new items); a damaged
    or foreign file is ignored and rewritten (the cache is never the only copy of anything)."""

    def __init__(self, root: str | os.PathLike, *, benchmark: str, model_key: str, flip: bool = True) -> None:
        self.path = Path(root) / benchmark / f"{model_key}{'' if flip else '-noflip'}.npz"
        self._store: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, values = data["keys"], data["embeddings"]
            if keys.ndim == 1 and values.ndim == 2 and len(keys) == len(values):
                self._store = dict(zip(keys.tolist(), values))
        except (OSError, KeyError, ValueError):
            self._store = {}

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> np.ndarray | None:
        return self._store.get(key)

    def update(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        for key, row in zip(keys, embeddings):
            self._store[key] = row

    def save(self) -> Path:
        from synthface.io import atomic_path

        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._store), dtype=str)
        values = np.stack(list(self._store.values())) if self._store else np.zeros((0, 0), np.float32)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=keys, embeddings=values)
        return self.path


def embed(
    recognizer: Recognizer,
    load_crops: Callable[[np.ndarray], np.ndarray],
    keys: Sequence[str],
    *,
    flip: bool = True,
    cache: EmbeddingCache | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
    what: str = "item",
) -> np.ndarray:
    """(N, D) float32 raw embeddings of the N items named by `keys` (see the module docstring).
    `progress(n)` is called after each chunk with the number of items it finished (cached ones at once);
    a `progress` with an `expect(n)` method is told the call's item count first."""
    n = len(keys)
    if callable(getattr(progress, "expect", None)):  # a bar without the protocol's `size` learns its total here
        progress.expect(n)
    rows: list[np.ndarray | None] = [cache.get(k) if cache is not None else None for k in keys]
    todo = np.array([i for i, row in enumerate(rows) if row is None], dtype=np.int64)
    if progress is not None and n - len(todo):
        progress(n - len(todo))
    for start in range(0, len(todo), chunk):
        index = todo[start : start + chunk]
        crops = load_crops(index)
        emb = recognizer.forward(crops).astype(np.float32)
        if flip:
            emb = emb + recognizer.forward(np.ascontiguousarray(crops[:, :, ::-1])).astype(np.float32)
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            bad = keys[int(index[int(np.argmin(finite))])]
            raise FileFormatError(
                f"{recognizer.description} gives a non-finite embedding (NaN or infinity) for {what} {bad}: its weights "
                "overflow on real input (a diverged training run or a damaged file). Evaluate an earlier checkpoint "
                "or another model."
            )
        for i, row in zip(index, emb):
            rows[int(i)] = row
        if cache is not None:
            cache.update([keys[int(i)] for i in index], emb)
        if progress is not None:
            progress(len(index))
    if cache is not None and len(todo):
        cache.save()
    if not n:
        return np.zeros((0, 0), np.float32)
    return np.stack(rows).astype(np.float32, copy=False)
