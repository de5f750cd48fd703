"""WebDataset: POSIX tar shards `shard-000000.tar`, ... with `{key}.jpg`, `{key}.cls`, `{key}.json` per sample.

Members of one sample are consecutive and share a dot-free key, which is how webdataset groups them.
Tar headers carry no time or owner, so the same samples always give the same bytes. Samples are
written in input order unless `shuffle=True` (through a disk spool), since webdataset only shuffles
within a buffer and identity-sorted shards would feed it one class at a time.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export._common import ExportSummary, Sample, SampleChecker, Spool, dump_meta, staged_dir

SHARD_PATTERN = "shard-%06d.tar"


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info, io.BytesIO(data)


def write(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    num_classes: int | None = None,
    samples_per_shard: int = 10_000,
    shuffle: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> ExportSummary:
    """Shards of at most `samples_per_shard` samples; `.json` holds the metadata plus label and key."""
    if samples_per_shard < 1:
        raise InvalidInputError(f"samples_per_shard must be at least 1, got {samples_per_shard}.")
    checker = SampleChecker(num_classes)
    out_dir = Path(out_dir)
    names: list[str] = []
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        tar: tarfile.TarFile | None = None

        def emit(stream: Iterable[Sample]) -> None:
            nonlocal tar
            for i, s in enumerate(stream):
                if i % samples_per_shard == 0:
                    if tar is not None:
                        tar.close()
                    names.append(SHARD_PATTERN % len(names))
                    tar = tarfile.open(tmp / names[-1], "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed below
                meta = dump_meta({**s.meta, "label": s.label, "key": s.key})
                for ext, data in (("jpg", s.jpeg), ("cls", str(s.label).encode()), ("json", meta)):
                    tar.addfile(*_member(f"{s.key}.{ext}", bytes(data)))

        try:
            if shuffle:
                with Spool(tmp / ".spool") as spool:
                    for s in checker(samples):
                        spool.add(s)
                    emit(spool.in_order(np.random.default_rng(seed).permutation(len(spool))))
            else:
                emit(checker(samples))
        finally:
            if tar is not None:
                tar.close()
    return ExportSummary("webdataset", out_dir, checker.count, checker.classes, tuple(names))


def read(folder: str | Path) -> Iterator[Sample]:
    """Every sample of every shard, in shard then member order."""
    if not Path(folder).is_dir():
        raise FileFormatError(f"{folder} is not a folder of WebDataset shards.")
    shards = sorted(Path(folder).glob("shard-*.tar"))
    for shard in shards:
        try:
            with tarfile.open(shard, "r") as tar:
                current: dict[str, bytes] = {}
                key = None
                for member in tar:
                    stem, _, ext = member.name.partition(".")
                    if key is not None and stem != key:
                        yield _sample(shard, key, current)
                        current = {}
                    key = stem
                    current[ext] = tar.extractfile(member).read()
                if key is not None:
                    yield _sample(shard, key, current)
        except (tarfile.TarError, EOFError) as exc:
            raise FileFormatError(f"{shard} is not a readable tar file ({exc}); the shard is truncated or corrupt.") from None


def _sample(shard: Path, key: str, parts: dict[str, bytes]) -> Sample:
    if set(parts) != {"jpg", "cls", "json"}:
        raise FileFormatError(f"Sample {key!r} in {shard} has members {sorted(parts)}, expected jpg, cls and json.")
    meta = json.loads(parts["json"])
    meta.pop("key", None)
    meta.pop("label", None)
    return Sample(int(parts["cls"]), key, parts["jpg"], meta)
