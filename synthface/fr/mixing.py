"""Training on several sources at once: `synthface train A B ... --out RUN` (exports of several runs, in
any format synthface reads, and real RecordIO sets such as CASIA-WebFace's `train.rec`/`train.idx`).

    mix = open_mix(["out/run1", "out/run2", "/data/faces_webface_112x112"], weights=[1, 1, 0.5])
    mix.source                      # one reader: source k's images after those before it
    mix.order(seed, epoch)          # this epoch's sample ids (see below)

Labels are kept apart: source k's label c becomes c + (the classes of sources 0..k-1), so no identity
of one source is merged with one of another (config.json records each source's `label_offset`).

How an epoch is composed, with weight w_k (default 1) for source k of n_k images: it holds
round(w_k x n_k) samples of source k (halves round up): floor(w_k) passes over all its images, plus
round(frac(w_k) x n_k) of them drawn afresh each epoch without replacement (a seeded permutation of
the source, stream (seed, epoch, EPOCH_ORDER_STREAM, k + 1), its first ones). Weight 2 shows every
image twice an epoch, 0.5 a different half each epoch, 1.5 every image once and half of them twice.
Every sample of the epoch is then shuffled together by the one permutation a single source uses
(stream (seed, epoch, EPOCH_ORDER_STREAM)), and the tail short of a global batch is dropped. An image's
extra copies in one epoch get augmentations of their own (seeded by the copy number). With every
weight 1 this is exactly one source's order over all images; one source reads exactly as before.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export import ExportReader
from synthface.fr.data import _deal, epoch_order, fingerprint, open_source, resolve_export
from synthface.seeds import EPOCH_ORDER_STREAM

#: The largest sampling weight of a source (each of its images that many times an epoch).
MAX_WEIGHT = 1000.0


class MixedSource(ExportReader):
    """Several readers as one: source k's images after those of sources < k, its labels offset by their classes."""

    def __init__(self, sources: Sequence[ExportReader], names: Sequence[str]) -> None:
        self.sources, self.names = list(sources), list(names)
        self.starts = np.cumsum([0] + [len(s) for s in self.sources])
        self.offsets = np.cumsum([0] + [s.num_classes for s in self.sources])
        self.labels = np.concatenate([np.asarray(s.labels, np.int64) + int(off) for s, off in zip(self.sources, self.offsets)])
        self.num_classes = int(self.offsets[-1])
        self.fmt = "+".join(s.fmt for s in self.sources)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(source, index in it) of sample i."""
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, int(i - self.starts[k])

    def read(self, i: int) -> tuple[bytes, int]:
        k, j = self.locate(i)
        data, label = self.sources[k].read(j)
        return data, int(label) + int(self.offsets[k])

    def where(self, i: int) -> str:
        k, j = self.locate(i)
        return f"{self.sources[k].where(j)} (source {k + 1} of {len(self.sources)}, {self.names[k]})"


@dataclass
class Mix:
    """The sources of one training run, their weights, and how each epoch is composed (module docstring)."""

    source: ExportReader
    paths: tuple[Path, ...]
    readers: tuple[ExportReader, ...]
    weights: tuple[float, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        """Samples of each source in one epoch: round(w_k x n_k), halves up."""
        return tuple(int(math.floor(w * len(r) + 0.5)) for w, r in zip(self.weights, self.readers))

    @property
    def epoch_size(self) -> int:
        return sum(self.counts)

    def order(self, seed: int, epoch: int, *, rank: int = 0, world: int = 1, batch_size: int = 1) -> np.ndarray:
        """This rank's sample ids for `epoch` (id = image + copy x len(source), see data.EpochView)."""
        n = len(self.source)
        if all(w == 1 for w in self.weights):
            return epoch_order(n, seed, epoch, rank=rank, world=world, batch_size=batch_size)
        parts, start = [], 0
        for k, (reader, weight) in enumerate(zip(self.readers, self.weights)):
            size, passes = len(reader), int(math.floor(weight))
            parts += [start + np.arange(size) + copy * n for copy in range(passes)]
            extra = self.counts[k] - passes * size
            if extra:
                chosen = np.random.default_rng((seed, epoch, EPOCH_ORDER_STREAM, k + 1)).permutation(size)[:extra]
                parts.append(start + chosen + passes * n)
            start += size
        pool = np.concatenate(parts).astype(np.int64)
        order = pool[np.random.default_rng((seed, epoch, EPOCH_ORDER_STREAM)).permutation(len(pool))]
        return _deal(order, rank, world, batch_size)

    def info(self) -> dict:
        """config.json's "data": as before for one source; for several, the totals and one entry per source
        (path, format, images, classes, label offset, weight, samples per epoch, fingerprint)."""
        if len(self.readers) == 1:
            source = self.readers[0]
            return {"path": str(self.paths[0].resolve()), "format": source.fmt, "num_images": len(source),
                    "num_classes": source.num_classes, "fingerprint": fingerprint(source)}
        offset, sources = 0, []
        for path, reader, weight, count in zip(self.paths, self.readers, self.weights, self.counts):
            sources.append({"path": str(path.resolve()), "format": reader.fmt, "num_images": len(reader),
                            "num_classes": reader.num_classes, "label_offset": offset, "weight": weight,
                            "samples_per_epoch": count, "fingerprint": fingerprint(reader)})
            offset += reader.num_classes
        digest = hashlib.sha256(",".join(s["fingerprint"] for s in sources).encode()).hexdigest()[:16]
        return {"path": " + ".join(s["path"] for s in sources), "format": self.source.fmt,
                "num_images": len(self.source), "num_classes": self.source.num_classes,
                "samples_per_epoch": self.epoch_size, "fingerprint": digest, "sources": sources}


def open_mix(paths: str | Path | Sequence[str | Path], fmt: str = "auto",
             weights: Sequence[float] | dict[str, float] | None = None) -> Mix:
    """Open every source (each checked as `open_source` does) and weigh them. `weights`: one number per
    source, or {source as given, or its folder's name: weight} (the others 1). The same export twice is
    refused (its identities would train as two people each; a weight oversamples it)."""
    paths = (Path(paths),) if isinstance(paths, (str, Path)) else tuple(Path(p) for p in paths)
    if not paths:
        raise InvalidInputError("No training data given: name one export (or several, to mix them).")
    folders = {}
    for path in paths:
        folder = resolve_export(path, fmt)[1].resolve()
        if folder in folders:
            raise InvalidInputError(
                f"{path} and {folders[folder]} are the same export ({folder}); mixing it with itself would train each "
                "identity as two. Name it once, and oversample it with --weight SOURCE=2 if you want it twice as often."
            )
        folders[folder] = path
    readers = tuple(open_source(path, fmt) for path in paths)
    weights = weight_list(weights, paths)
    if len(paths) == 1 and weights != (1.0,):
        raise InvalidInputError(
            f"A weight ({weights[0]:g}) only weighs a source against others, and {paths[0]} is the only one. Train on "
            "several sources (synthface train A B ...), or change the number of epochs with --set epochs=N."
        )
    for path, reader, weight in zip(paths, readers, weights):
        if math.floor(weight * len(reader) + 0.5) == 0:
            raise InvalidInputError(f"{path} would give no sample an epoch: weight {weight:g} x {len(reader)} images rounds "
                                    "to 0. Raise its weight, or leave the source out.")
    source = readers[0] if len(readers) == 1 else MixedSource(readers, [str(p) for p in paths])
    if len(readers) > 1:
        _check_labels_fit(paths, readers)
    return Mix(source, paths, readers, weights)


def _check_labels_fit(paths: tuple[Path, ...], readers: tuple[ExportReader, ...]) -> None:
    total = sum(r.num_classes for r in readers)
    if total >= 2**31:
        raise FileFormatError(f"The sources {', '.join(map(str, paths))} hold {total:,} classes together, more than a "
                              "label can number; train on fewer sources.")


def weight_list(weights: Sequence[float] | dict[str, float] | None, paths: Sequence[Path]) -> tuple[float, ...]:
    """One checked weight per source (see `open_mix`)."""
    if weights is None:
        return (1.0,) * len(paths)
    if isinstance(weights, dict):
        out = [1.0] * len(paths)
        for name, value in weights.items():
            out[_source_index(name, paths)] = value
        weights = out
    weights = list(weights)
    if len(weights) != len(paths):
        raise InvalidInputError(f"{len(weights)} weights for {len(paths)} sources; give one per source, in order.")
    for path, w in zip(paths, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 < w <= MAX_WEIGHT:
            raise InvalidInputError(f"The weight of {path} is {w!r}; a weight is a number above 0 and at most {MAX_WEIGHT:g} "
                                    "(2: each image twice an epoch, 0.5: half of them).")
    return tuple(float(w) for w in weights)


def _source_index(name: str, paths: Sequence[Path]) -> int:
    given = [i for i, p in enumerate(paths) if str(p) == name or str(p).rstrip("/") == name.rstrip("/")]
    if not given:
        given = [i for i, p in enumerate(paths) if p.resolve() == Path(name).resolve()]
    if not given:
        given = [i for i, p in enumerate(paths) if p.resolve().name == name]
    if len(given) != 1:
        what = "names no source" if not given else "names several sources (give the path)"
        raise InvalidInputError(f"--weight {name}=... {what}; the sources are {', '.join(map(str, paths))} (name one as "
                                "given, or by its folder's name).")
    return given[0]


def parse_weights(items: Sequence[str], paths: Sequence[Path]) -> dict[str, float]:
    """`--weight SOURCE=W` strings -> {SOURCE: W}; the source is checked against `paths`, W must be a number."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            weight = float(value) if sep and name else None
        except ValueError:
            weight = None
        if weight is None:
            raise InvalidInputError(f"--weight {item!r} is not SOURCE=W; write a source as given (or its folder's name), "
                                    "'=' and a number, e.g. --weight casia=0.5.")
        index = _source_index(name, paths)
        if any(_source_index(other, paths) == index for other in out):
            raise InvalidInputError(f"--weight gives {paths[index]} two weights; give each source one.")
        out[name] = weight
    return out


def data_changes(before: dict, now: dict) -> str:
    """What differs between the data a run started on (config.json's "data") and the data given now, in
    words; "" when it is the same. One source is compared as always (images, classes, fingerprint); several
    source by source (their number, order, counts, fingerprints and weights)."""
    keys = ("num_images", "num_classes", "fingerprint")
    old_sources, new_sources = before.get("sources"), now.get("sources")
    if old_sources is None and new_sources is None:
        changed = [k for k in keys if k in before and before[k] != now[k]]
        if not changed:
            return ""
        was = ", ".join(f"{k} {before[k]}" for k in changed)
        is_now = ", ".join(f"{k} {now[k]}" for k in changed)
        return f"{before.get('path', 'unknown path')}: {was}; now {now['path']}: {is_now}"
    old_sources, new_sources = old_sources or [before], new_sources or [now]
    if len(old_sources) != len(new_sources):
        return (f"{len(old_sources)} source(s): {before.get('path', 'unknown paths')}; now {len(new_sources)}: "
                f"{now['path']}")
    for k, (old, new) in enumerate(zip(old_sources, new_sources), 1):
        changed = [key for key in (*keys, "weight") if key in old and old[key] != new.get(key, 1.0)]
        if changed:
            was = ", ".join(f"{key} {old[key]}" for key in changed)
            is_now = ", ".join(f"{key} {new.get(key, 1.0)}" for key in changed)
            return f"source {k}, {old.get('path', 'unknown path')}: {was}; now {new['path']}: {is_now}"
    return ""
