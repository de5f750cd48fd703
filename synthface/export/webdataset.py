"""WebDataset: POSIX tar shards `shard-000000.tar`, ... with `{key}.jpg`, `{key}.cls`, `{key}.json` per sample.

Members of one sample are consecutive and share a dot-free key, which is how webdataset groups them.
Tar headers carry no time or owner, so the same samples always give the same bytes. Samples are
written in input order unless `shuffle=True` (through a disk spool), since webdataset only shuffles
within a buffer and identity-sorted shards would feed it one class at a time. `open(folder)`
locates every sample's members once, then reads images by offset (what training reads).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export._common import (
    ExportFormat,
    ExportReader,
    ExportSummary,
    Sample,
    SampleChecker,
    Spool,
    dump_meta,
    staged_dir,
)

SHARD_PATTERN = "shard-%06d.tar"
SHARD_GLOB = "shard-*.tar"


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
    import numpy as np

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
    shards = sorted(Path(folder).glob(SHARD_GLOB))
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


class WebDatasetSource(ExportReader):
    """The images of a WebDataset export by index: every shard's members located once (each label read
    from its `.cls`), then each image read by its offset in the tar."""

    fmt = "webdataset"

    def __init__(self, folder: Path):
        import numpy as np

        self.shards = sorted(Path(folder).glob(SHARD_GLOB))
        where, sizes, labels, self.names = [], [], [], []
        for s, shard in enumerate(self.shards):
            try:
                with tarfile.open(shard, "r") as tar:
                    members: dict[str, dict[str, tarfile.TarInfo]] = {}
                    for m in tar:
                        stem, _, ext = m.name.partition(".")
                        members.setdefault(stem, {})[ext] = m
                    for key, parts in members.items():
                        if "jpg" not in parts or "cls" not in parts:
                            raise FileFormatError(f"Sample {key!r} in {shard} lacks its .jpg or .cls member; the shard is damaged.")
                        labels.append(int(tar.extractfile(parts["cls"]).read(64)))
                        where.append((s, parts["jpg"].offset_data))
                        self.names.append(parts["jpg"].name)
                        sizes.append(parts["jpg"].size)
            except (tarfile.TarError, EOFError, ValueError) as exc:
                raise FileFormatError(f"{shard} is not a readable WebDataset shard ({exc}); it is truncated or corrupt.") from None
        self.where_ = np.array(where, dtype=np.int64).reshape(-1, 2)
        self.sizes = np.array(sizes, dtype=np.int64)
        self.labels = np.array(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.sizes)

    def where(self, i: int) -> str:
        return f"Member {self.names[i]} of {self.shards[int(self.where_[i][0])]}"

    def read(self, i: int) -> tuple[bytes, int]:
        shard, offset = self.where_[i]
        handle = self._handle(self.shards[shard])
        handle.seek(int(offset))
        return handle.read(int(self.sizes[i])), int(self.labels[i])


def detect(folder: Path) -> bool:
    return any(Path(folder).glob(SHARD_GLOB))


FORMAT = ExportFormat(
    name="webdataset", files=(SHARD_PATTERN,), signature=SHARD_GLOB,
    write=write, detect=detect, open=WebDatasetSource,
)
