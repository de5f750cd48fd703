"""Training data: every export synthface writes, read by random access, with HSFace's augmentation.

    ds = open_training_set("out/run/export/recordio", augment="hsface", input_size=112, seed=42)
    image, label = ds.item(index, epoch)         # (3, S, S) float32 in [-1, 1], int

Every format synthface exports is read through its own `open` (synthface.export.FORMATS, the one
registry of formats): `fmt="auto"` tells them apart by their files (`detect_format`), and a run
folder's `export/` is searched in the registry's order. File handles are opened per process on
first use, so DataLoader workers never share one.

Images are decoded to RGB, resized to `input_size` when they differ, and fed as (x/255 - 0.5)/0.5.
Augmentation is drawn from a generator seeded by (seed, epoch, index): the same sample gets the same
pixels whatever the number of workers or an interruption, which makes resumed runs exact.

Several sources train as one (`open_mix`, synthface.fr.mixing: `synthface train A B ...`), labels kept
apart and each source weighted; one source is read exactly as before.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export import FORMATS, ExportReader, detect_format
from synthface.seeds import EPOCH_ORDER_STREAM

AUGMENTATIONS = ("hsface", "adaface", "flip", "none")
Augment = Literal["hsface", "adaface", "flip", "none"]

# ----------------------------------------------------------------------------------------------- finding the export


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
        found = detect_format(folder)
        if found and fmt in ("auto", found):
            return found, folder
    wanted = "an export" if fmt == "auto" else f"a {fmt} export"
    *first, last = (f"{f.signature} ({f.name})" for f in FORMATS.values())
    raise FileFormatError(
        f"{path} is not {wanted} synthface can train on. An export folder holds {', '.join(first)} or {last}; "
        "a run folder holds them under export/<format>/. Run `synthface export RUN --format recordio` to make one."
    )


def open_source(path: str | Path, fmt: str = "auto") -> ExportReader:
    """The encoded images and labels of an export (see `resolve_export`), opened by its format's `open`;
    refuses empty sets, labels out of range and empty classes before anything is sized from the labels."""
    found, folder = resolve_export(path, fmt)
    source = FORMATS[found].open(folder)
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

    from synthface.fr.benchmarks.bin import decode_image

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


@dataclass(frozen=True)
class AugmentPolicy:
    """One augmentation mode: the probability of each of crop on black, low resolution and colour jitter
    (applied in that order), of the horizontal flip, and of RandomErasing after normalisation."""

    photometric_p: float = 0.0
    flip_p: float = 0.0
    erasing_p: float = 0.0


#: The modes: HSFace / SOTA-FR's (p 0.3 each, flip, RandomErasing p 0.5), AdaFace's (its Augmenter:
#: crop / low-res / photometric p 0.2 each, in that order, then the flip; no erasing), flip only, none.
AUGMENT_POLICIES = {
    "hsface": AugmentPolicy(photometric_p=0.3, flip_p=0.5, erasing_p=0.5),
    "adaface": AugmentPolicy(photometric_p=0.2, flip_p=0.5),
    "flip": AugmentPolicy(flip_p=0.5),
    "none": AugmentPolicy(),
}
assert tuple(AUGMENT_POLICIES) == AUGMENTATIONS


def augment_image(img: np.ndarray, mode: Augment, rng: np.random.Generator) -> np.ndarray:
    """`mode`'s policy (AUGMENT_POLICIES) on one (H, W, 3) uint8 RGB image; returns the normalised
    (3, H, W) float32 input. A mode draws only what it uses, so "flip" and "none" draw as before."""
    policy = AUGMENT_POLICIES[mode]
    if policy.photometric_p:
        for p_op in (crop_on_black, low_resolution, color_jitter):
            if rng.random() < policy.photometric_p:
                img = p_op(img, rng)
    if policy.flip_p and rng.random() < policy.flip_p:
        img = img[:, ::-1]
    x = to_input(np.ascontiguousarray(img))
    if policy.erasing_p and rng.random() < policy.erasing_p:
        x = random_erasing(x, rng)
    return x


# ----------------------------------------------------------------------------------------------- the dataset


@dataclass
class TrainingSet:
    """A source plus how its images become inputs; `item(i, epoch)` is deterministic in (seed, epoch, i)."""

    source: ExportReader
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

    def item(self, i: int, epoch: int, repeat: int = 0) -> tuple[np.ndarray, int]:
        """Image `i` as epoch `epoch` sees it; `repeat` > 0 is its repeat-th extra copy in that epoch (an
        oversampled source), which draws its own augmentation."""
        data, label = self.source.read(i)
        if label != self.source.labels[i]:
            raise FileFormatError(
                f"{self.source.where(i)} now has label {label}, not the {self.source.labels[i]} it had when training "
                "started: the export changed under the run. Restore it, or train on the new export into a new --out."
            )
        rng = np.random.default_rng((self.seed, epoch, i) if repeat == 0 else (self.seed, epoch, i, repeat))
        return augment_image(decode_rgb(data, self.input_size, self.source.where(i)), self.augment, rng), label


def fingerprint(source: ExportReader, samples: int = 8) -> str:
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
    """torch Dataset over one epoch of a TrainingSet: sample id -> (tensor, label); picklable for workers.
    A sample id is i + repeat x len(data) (see `Mix.order`): image i, its repeat-th extra copy this epoch."""

    def __init__(self, data: TrainingSet, epoch: int):
        self.data, self.epoch = data, epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        import torch

        repeat, index = divmod(int(i), len(self.data))
        x, label = self.data.item(index, self.epoch, repeat)
        return torch.from_numpy(x), label


def epoch_order(n: int, seed: int, epoch: int, *, rank: int = 0, world: int = 1, batch_size: int = 1) -> np.ndarray:
    """This rank's sample indices for `epoch`: one seeded permutation, cut to whole global batches
    (the tail that does not fill one is dropped), every world-th batch slot to this rank."""
    return _deal(np.random.default_rng((seed, epoch, EPOCH_ORDER_STREAM)).permutation(n), rank, world, batch_size)


def _deal(order: np.ndarray, rank: int, world: int, batch_size: int) -> np.ndarray:
    usable = len(order) // (batch_size * world) * batch_size * world
    return order[:usable].reshape(-1, world, batch_size)[:, rank].reshape(-1)
