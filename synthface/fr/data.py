"""Training data: every export synthface writes, read by random access, with HSFace's augmentation.

    ds = open_training_set("out/run/export/recordio", augment="hsface", input_size=112, seed=42)
    image, label = ds.item(index, epoch)         # (3, S, S) float32 in [-1, 1], int

Formats (`fmt="auto"` tells them apart by their files; a run folder's `export/` is searched in the
order recordio, imagefolder, webdataset, parquet): RecordIO flat and header layouts (pure Python,
read by key), ImageFolder, WebDataset shards (members located once, then read by offset) and
Parquet (row groups read on demand through a small per-process cache; the slowest for shuffled
access, so prefer RecordIO for long runs). File handles are opened per process on first use, so
DataLoader workers never share one.

Images are decoded to RGB, resized to `input_size` when they differ, and fed as (x/255 - 0.5)/0.5.
Augmentation is drawn from a generator seeded by (seed, epoch, index): the same sample gets the same
pixels whatever the number of workers or an interruption, which makes resumed runs exact.
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
import re
import struct
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError

FORMATS = ("recordio", "imagefolder", "webdataset", "parquet")
AUGMENTATIONS = ("hsface", "flip", "none")
Augment = Literal["hsface", "flip", "none"]

# ----------------------------------------------------------------------------------------------- format detection


def _looks_like(folder: Path) -> str | None:
    if (folder / "train.rec").is_file() and (folder / "train.idx").is_file():
        return "recordio"
    if any(folder.glob("data/train-*.parquet")):
        return "parquet"
    if any(folder.glob("shard-*.tar")):
        return "webdataset"
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subdirs and all(p.name.isdigit() for p in subdirs):
        return "imagefolder"
    return None


def resolve_export(path: str | Path, fmt: str = "auto") -> tuple[str, Path]:
    """(format, folder) for an export folder or a run folder holding `export/<format>/`.

    Raises FileFormatError naming what an export looks like when `path` is none.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise InvalidInputError(f"Unknown training data format {fmt!r}; choose auto or one of {', '.join(FORMATS)}.")
    if not path.is_dir():
        raise FileFormatError(f"{path} is not a folder. Pass a synthface export folder or the run folder that holds export/.")
    candidates = [path] + [path / "export" / f for f in FORMATS if (path / "export" / f).is_dir()]
    for folder in candidates:
        found = _looks_like(folder)
        if found and fmt in ("auto", found):
            return found, folder
    wanted = "an export" if fmt == "auto" else f"a {fmt} export"
    raise FileFormatError(
        f"{path} is not {wanted} synthface can train on. An export folder holds train.rec + train.idx (recordio), "
        "numbered class folders of .jpg (imagefolder), shard-*.tar (webdataset) or data/train-*.parquet (parquet); "
        "a run folder holds them under export/<format>/. Run `synthface export RUN --format recordio` to make one."
    )


# ----------------------------------------------------------------------------------------------- sources


class _Source(abc.ABC):
    """Encoded image + label by index; subclasses open their files lazily, once per process."""

    fmt: str
    labels: np.ndarray  # known without decoding images (RecordIO: read from each record's header)
    num_classes: int

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abc.abstractmethod
    def read(self, i: int) -> tuple[bytes, int]:
        """Sample `i`: its encoded image and its label."""

    @abc.abstractmethod
    def where(self, i: int) -> str:
        """Where sample `i` lives, for a message ("Record 7 (byte 1234) of .../train.rec")."""

    def __getstate__(self) -> dict:  # handles never travel to workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, path: Path):
        pid = os.getpid()
        if getattr(self, "_pid", None) != pid:
            self._handles, self._pid = {}, pid
        if path not in self._handles:
            self._handles[path] = open(path, "rb")  # noqa: SIM115 - lives as long as the process's source
        return self._handles[path]


class _RecordIO(_Source):
    fmt = "recordio"

    def __init__(self, folder: Path):
        from synthface.export.recordio import PROPERTY, RecordIOReader, read_header_at

        with RecordIOReader(folder) as reader:
            keys, prop, handle = reader.keys, reader.property, reader._file
            self.path = reader.rec_path
            if keys:
                header = read_header_at(handle, reader.offsets[keys[0]])
                if header.flag > 0:  # header layout: images are keys 1 .. label[0] - 1
                    keys = _header_layout_keys(header, reader.offsets, folder)
            labels = [read_header_at(handle, reader.offsets[k]) for k in keys]
            self.keys = np.array(keys, dtype=np.int64)
            self.offsets = np.array([reader.offsets[k] for k in keys], dtype=np.int64)
        if prop is None:
            raise FileFormatError(f"{folder} has no 'property' file ('<classes>,<height>,<width>'); the export is incomplete.")
        if len(prop) != 3 or min(prop) < 1:
            raise FileFormatError(f"{folder / PROPERTY} reads {','.join(map(str, prop))}, not '<classes>,<height>,<width>' "
                                  "with three positive numbers; the export is damaged. Export the run again.")
        if prop[0] > len(keys):
            raise FileFormatError(
                f"{folder / PROPERTY} claims {prop[0]:,} classes, but {self.path} holds only {len(keys):,} images; every "
                "class needs at least one. The property file is damaged or belongs to another export: write "
                "'<classes>,<height>,<width>' with the true class count, or export the run again."
            )
        self.num_classes = prop[0]
        values = np.array([h.label if h.flag == 0 else h.label[0] for h in labels], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= self.num_classes))
        if len(bad):
            i = int(bad[0])
            raise FileFormatError(
                f"{self.where(i)} has label {values[i]:g}, not a class number in 0..{self.num_classes - 1} (the property "
                f"file's {self.num_classes} classes; {len(bad)} such records in all). The export is damaged or its "
                "property file belongs to another one: export the run again."
            )
        self.labels = values.astype(np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        return f"Record {int(self.keys[i])} (byte {int(self.offsets[i])}) of {self.path}"

    def read(self, i: int) -> tuple[bytes, int]:
        from synthface.export.recordio import read_next_payload, unpack

        handle = self._handle(self.path)
        handle.seek(int(self.offsets[i]))
        payload = read_next_payload(handle)
        if payload is None:
            raise FileFormatError(f"{self.path} ends where its index expects record {i}; the file is truncated.")
        header, image = unpack(payload)
        return image, int(header.label if header.flag == 0 else header.label[0])


def _header_layout_keys(header, offsets: dict[int, int], folder: Path) -> list[int]:
    """Keys 1 .. label[0] - 1 of a header-layout RecordIO, checked against its index before any list is made."""
    end = header.label[0]
    if not np.isfinite(end) or end != int(end) or not 2 <= end <= len(offsets):
        raise FileFormatError(
            f"The header record (key 0) of {folder / 'train.rec'} says the images are keys 1..{end:g} - 1, but "
            f"{folder / 'train.idx'} lists {len(offsets):,} records; the header is damaged. Export the run again."
        )
    missing = next((k for k in range(1, int(end)) if k not in offsets), None)
    if missing is not None:
        raise FileFormatError(
            f"{folder / 'train.idx'} has no line for image key {missing}, which the header record (key 0) announces; "
            "the files do not belong together. Export the run again."
        )
    return list(range(1, int(end)))


class _ImageFolder(_Source):
    fmt = "imagefolder"

    def __init__(self, folder: Path):
        from synthface.export import imagefolder

        items = imagefolder.read(folder)
        self.paths = [str(p) for _, p in items]
        self.labels = np.array([label for label, _ in items], dtype=np.int64)
        empty = sorted(p.name for p in folder.iterdir() if p.is_dir() and not any(p.glob("*.jpg")))
        if empty:
            raise FileFormatError(
                f"Class folder {folder / empty[0]} holds no images ({len(empty)} empty in all). Every class needs "
                "images: remove the empty folders and renumber the rest contiguously, or export the run again."
            )
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, i: int) -> str:
        return f"Image {self.paths[i]}"

    def read(self, i: int) -> tuple[bytes, int]:
        with open(self.paths[i], "rb") as handle:
            return handle.read(), int(self.labels[i])


class _WebDataset(_Source):
    fmt = "webdataset"

    def __init__(self, folder: Path):
        self.shards = sorted(folder.glob("shard-*.tar"))
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


class _Parquet(_Source):
    fmt = "parquet"
    CACHED_GROUPS = 8

    def __init__(self, folder: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files = sorted(folder.glob("data/train-*.parquet"))
        where, labels = [], []
        for f, path in enumerate(self.files):
            try:
                meta = pq.ParquetFile(path)
                for g in range(meta.num_row_groups):
                    group = meta.read_row_group(g, columns=["label"]).column("label").to_numpy()
                    if not np.issubdtype(group.dtype, np.integer):
                        raise FileFormatError(f"{path} row group {g} has {group.dtype} labels, not integers; a synthface "
                                              "Parquet export stores class numbers. Export the run again.")
                    labels.append(group)
                    where.append(np.stack([np.full(len(group), f), np.full(len(group), g), np.arange(len(group))], 1))
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise FileFormatError(f"{path} is not a readable synthface Parquet file ({exc}); it is truncated or corrupt.") from None
        self.where_ = np.concatenate(where).astype(np.int64) if where else np.zeros((0, 3), np.int64)
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self._groups: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_groups"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        f, g, row = (int(x) for x in self.where_[i])
        return f"Row {row} of row group {g} of {self.files[f]}"

    def read(self, i: int) -> tuple[bytes, int]:
        import pyarrow.parquet as pq

        f, g, row = (int(x) for x in self.where_[i])
        images = self._groups.get((f, g))
        if images is None:
            table = pq.ParquetFile(self._handle(self.files[f])).read_row_group(g, columns=["image"])
            images = table.column("image").combine_chunks().field("bytes")
            self._groups[(f, g)] = images
            if len(self._groups) > self.CACHED_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end((f, g))
        return images[row].as_py(), int(self.labels[i])


_SOURCES = {"recordio": _RecordIO, "imagefolder": _ImageFolder, "webdataset": _WebDataset, "parquet": _Parquet}


def open_source(path: str | Path, fmt: str = "auto") -> _Source:
    """The encoded images and labels of an export (see `resolve_export`); refuses empty sets and empty classes."""
    found, folder = resolve_export(path, fmt)
    source = _SOURCES[found](folder)
    if len(source) == 0:
        raise FileFormatError(f"The {found} export in {folder} holds no images; export a run that kept images.")
    labels = source.labels
    if labels.min() < 0:
        i = int(np.argmin(labels))
        raise FileFormatError(f"{source.where(i)} has label {labels[i]}, a negative class number; the {found} export in "
                              f"{folder} is damaged. Export the run again.")
    if source.num_classes > len(source):  # checked before counting: a damaged label must not size an array
        i = int(np.argmax(labels))
        raise FileFormatError(
            f"The {found} export in {folder} holds {len(source):,} images but its labels reach {source.num_classes - 1:,} "
            f"({source.where(i)}); every class needs at least one image. Relabel the classes contiguously from 0 or "
            "export the run again."
        )
    counts = np.bincount(labels, minlength=source.num_classes)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        raise FileFormatError(
            f"The {found} export in {folder} has no images for {len(empty)} of its {source.num_classes} classes "
            f"(first: label {empty[0]}); margin heads would keep centres no image pulls on. Relabel the classes "
            "contiguously or export the run again."
        )
    if source.num_classes < 2:
        raise FileFormatError(f"The {found} export in {folder} has {source.num_classes} class; training a recogniser needs at least 2.")
    return source


# ----------------------------------------------------------------------------------------------- augmentation

_CV2_INTERPOLATIONS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_AREA", "INTER_CUBIC", "INTER_LANCZOS4")


MAX_PIXELS = 4096 * 4096  # a training image's largest width x height (face crops are 112 px; 48 MiB decoded)


def decode_rgb(data: bytes, size: int, what: str = "A training image") -> np.ndarray:
    """Encoded bytes -> (size, size, 3) uint8 RGB (area-resized when the image has another size).

    The image's width and height are read from its header first (nothing decoded): one over
    MAX_PIXELS, or bytes that are no image, are refused naming `what`, with bounded memory."""
    import warnings

    from PIL import Image

    from synthface.fr.verification import decode_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:  # PIL's own limit (higher than ours) names only the pixel count
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        width, height = (int(pixels.group(1)), 1) if pixels else (MAX_PIXELS + 1, 1)
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise FileFormatError(f"{what} is not a readable image ({exc}); the export is damaged. Export the run again.") from None
    if width * height > MAX_PIXELS:
        shape = f"a {width}x{height} image ({width * height:,} pixels)" if height > 1 else f"an image of {width:,} pixels"
        raise FileFormatError(
            f"{what} is {shape}, more than the {MAX_PIXELS:,} a training "
            "image may have (face crops are about 112x112); it was not decoded. The export is damaged or holds "
            "another data set: export the run again with its crop size."
        )
    return decode_image(data, size, what)


def crop_on_black(img: np.ndarray, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """RandomResizedCrop's box (area share U(scale), log-uniform aspect `ratio`, 10 tries, else the
    whole image) kept at its place and size on a black canvas: the face stays aligned, the rest is cut."""
    h, w = img.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out = np.zeros_like(img)
            out[top : top + ch, left : left + cw] = img[top : top + ch, left : left + cw]
            return out
    return img


def low_resolution(img: np.ndarray, rng: np.random.Generator, low: float = 0.2) -> np.ndarray:
    """Down to side * U(low, 1) and back up, each way with a random cv2 interpolation."""
    import cv2

    h, w = img.shape[:2]
    r = rng.uniform(low, 1.0)
    small = (max(1, int(w * r)), max(1, int(h * r)))
    down, up = (getattr(cv2, _CV2_INTERPOLATIONS[int(k)]) for k in rng.integers(0, len(_CV2_INTERPOLATIONS), 2))
    return cv2.resize(cv2.resize(img, small, interpolation=down), (w, h), interpolation=up)


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 0.5) -> np.ndarray:
    """Brightness, contrast and saturation factors U(1 - s, 1 + s), applied in random order (hue untouched)."""
    x = img.astype(np.float32)
    for op in rng.permutation(3):
        f = rng.uniform(1 - strength, 1 + strength)
        if op == 0:
            x = x * f
        else:
            gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
            ref = gray.mean() if op == 1 else gray[..., None]
            x = f * x + (1 - f) * ref
        x = np.clip(x, 0, 255)
    return x.round().astype(np.uint8)


def random_erasing(x: np.ndarray, rng: np.random.Generator, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> np.ndarray:
    """RandomErasing's rule on a normalised (3, H, W) array: a box of area share U(scale) and log-uniform
    aspect `ratio` (10 tries) set to 0."""
    _, h, w = x.shape
    for _ in range(10):
        target = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        eh, ew = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if eh < h and ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x[:, top : top + eh, left : left + ew] = 0.0
            return x
    return x


def to_input(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, (x / 255 - 0.5) / 0.5."""
    return (img.transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5) / 0.5


def augment_image(img: np.ndarray, mode: Augment, rng: np.random.Generator) -> np.ndarray:
    """HSFace (p 0.3 each: crop on black, low resolution, colour jitter; flip 0.5; RandomErasing p 0.5
    after normalisation), flip only, or none; returns the normalised (3, H, W) float32 input."""
    if mode == "hsface":
        for p_op in (crop_on_black, low_resolution, color_jitter):
            if rng.random() < 0.3:
                img = p_op(img, rng)
    if mode in ("hsface", "flip") and rng.random() < 0.5:
        img = img[:, ::-1]
    x = to_input(np.ascontiguousarray(img))
    if mode == "hsface" and rng.random() < 0.5:
        x = random_erasing(x, rng)
    return x


# ----------------------------------------------------------------------------------------------- the dataset


@dataclass
class TrainingSet:
    """A source plus how its images become inputs; `item(i, epoch)` is deterministic in (seed, epoch, i)."""

    source: _Source
    augment: Augment = "flip"
    input_size: int = 112
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise InvalidInputError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}.")

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def item(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        data, label = self.source.read(i)
        if label != self.source.labels[i]:
            raise FileFormatError(
                f"{self.source.where(i)} now has label {label}, not the {self.source.labels[i]} it had when training "
                "started: the export changed under the run. Restore it, or train on the new export into a new --out."
            )
        rng = np.random.default_rng((self.seed, epoch, i))
        return augment_image(decode_rgb(data, self.input_size, self.source.where(i)), self.augment, rng), label


def fingerprint(source: _Source, samples: int = 8) -> str:
    """A cheap digest of a training set's content: its size, class count, every label in order and
    the bytes of `samples` evenly spaced images (a resumed run must see the data it started on)."""
    digest = hashlib.sha256(f"{len(source)},{source.num_classes}".encode())
    digest.update(np.ascontiguousarray(source.labels, dtype="<i8").tobytes())
    for i in np.unique(np.linspace(0, len(source) - 1, samples).round().astype(np.int64)):
        digest.update(source.read(int(i))[0])
    return digest.hexdigest()[:16]


def open_training_set(path: str | Path, *, fmt: str = "auto", augment: Augment = "flip", input_size: int = 112, seed: int = 0) -> TrainingSet:
    return TrainingSet(open_source(path, fmt), augment, input_size, seed)


class EpochView:
    """torch Dataset over one epoch of a TrainingSet: index -> (tensor, label); picklable for workers."""

    def __init__(self, data: TrainingSet, epoch: int):
        self.data, self.epoch = data, epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        import torch

        x, label = self.data.item(int(i), self.epoch)
        return torch.from_numpy(x), label


def epoch_order(n: int, seed: int, epoch: int, *, rank: int = 0, world: int = 1, batch_size: int = 1) -> np.ndarray:
    """This rank's sample indices for `epoch`: one seeded permutation, cut to whole global batches
    (the tail that does not fill one is dropped), every world-th batch slot to this rank."""
    order = np.random.default_rng((seed, epoch, 0x5EED)).permutation(n)
    usable = n // (batch_size * world) * batch_size * world
    return order[:usable].reshape(-1, world, batch_size)[:, rank].reshape(-1)
