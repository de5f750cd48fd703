"""Face verification on insightface `.bin` packs (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW), their protocol exactly.

A `.bin` is a pickle of (2N encoded images, N booleans); pair i is images 2i and 2i+1. Images are
decoded to RGB, resized to the model's input side when they differ, fed as (x / 255 - 0.5) / 0.5,
and embedded as L2-normalise(f(x) + f(flip(x))). Scores are squared L2 distances; the accuracy is
insightface's 10-fold protocol: contiguous unshuffled folds (the first N % 10 one pair longer),
thresholds 0, 0.01, ..., 3.99, "same" when distance < threshold, on each fold the first threshold
with the best accuracy on the other nine, scored on this fold; mean and population std over folds.
TAR at FAR 1e-3 follows the same folds, with the threshold found by linear interpolation of the
training FAR curve after collapsing equal FARs (insightface's `interp1d` call raises on SciPy >= 1.14).

The packs are not redistributable and synthface never downloads them. They ship inside
insightface's training-set archives (e.g. `faces_emore`, `faces_webface_112x112`, `ms1m-retinaface`);
`synthface eval make-bin` (synthface.fr.make_bin) makes one from your own photos, offline.

Packs are read defensively: pair labels must be booleans, and each image's declared size is read
from its header and refused above BIN_MAX_PIXELS before anything is decoded (a decompression bomb
is named by its record and costs no memory). Models with non-finite weights, and embeddings that
come out non-finite, are refused rather than scored as "different".
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.benchmarks.recognizers import Recognizer
from synthface.fr.benchmarks.registry import Benchmark

STANDARD_SETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
THRESHOLDS = np.arange(0, 4, 0.01)
NUM_FOLDS = 10
TAR_FAR = 1e-3
#: Most pixels an image inside a .bin pack may declare (4 MP; the packs hold 112 x 112 crops). Checked
#: from each image's header before decoding, so a decompression bomb costs no memory.
BIN_MAX_PIXELS = 2048 * 2048
WHERE_BINS = (
    "The .bin packs are not shipped with synthface (their licences forbid it); they come inside insightface's "
    "training-set archives (faces_emore, faces_webface_112x112, ms1m-retinaface-t1, ...) as lfw.bin, cfp_fp.bin, "
    "agedb_30.bin, calfw.bin and cplfw.bin. Point --bins at the folder that holds them."
)

# ----------------------------------------------------------------------------------------------- .bin packs

# A .bin holds lists of bytes and booleans. Python 3 writes bytes at protocol 2 through
# _codecs.encode, and some packs hold numpy booleans; nothing else may be constructed.
_PICKLE_GLOBALS = {
    ("_codecs", "encode"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
}


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a .bin pack")
        return super().find_class(module, name)


@dataclass(frozen=True)
class BinPack:
    """One verification set: `images` are the 2N encoded images, `issame` the N pair labels."""

    name: str
    images: list[bytes]
    issame: np.ndarray

    @property
    def pairs(self) -> int:
        return int(self.issame.shape[0])

    def decode(self, start: int, stop: int, size: int) -> np.ndarray:
        """Images start..stop-1 as (n, size, size, 3) uint8 RGB."""
        return np.stack([decode_image(self.images[i], size, self.record(i)) for i in range(start, stop)])

    def record(self, i: int) -> str:
        """Image `i` in words, for errors: the pack, the image and its pair."""
        return f"{self.name}.bin image {i} (pair {i // 2})"


def _unpickle(data: bytes, **kwargs):
    return _BinUnpickler(io.BytesIO(data), **kwargs).load()


def read_bin(path: str | Path) -> BinPack:
    """Read a `.bin` pack (any pickle protocol; Python 2 packs through encoding="bytes"), checking its shape.

    Only lists, tuples, bytes, booleans and numpy booleans are unpickled, so a pack cannot run code.
    Raises FileFormatError for an unreadable pack, image and pair counts that disagree, or < 10 pairs.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise FileFormatError(f"{path} {what}. {WHERE_BINS}")
    data = path.read_bytes()
    try:
        try:
            obj = _unpickle(data)
        except UnicodeDecodeError:
            obj = _unpickle(data, encoding="bytes")
    except Exception as exc:  # any unpickling failure means the same thing to the user
        raise FileFormatError(
            f"{path} is not a readable insightface .bin pack ({type(exc).__name__}: {exc}). The file is truncated "
            f"or corrupt, or not a .bin pack; copy it again from the archive it came in."
        ) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise FileFormatError(f"{path} unpickles to a {type(obj).__name__}, not (images, issame); it is not an insightface .bin pack.")
    images, issame = obj
    if not isinstance(images, (list, tuple)):
        raise FileFormatError(f"{path}: the images are a {type(images).__name__}, not a list of encoded images; it is not an insightface .bin pack.")
    images = [bytes(im) if isinstance(im, (bytes, bytearray, memoryview)) else im for im in images]
    if not all(isinstance(im, bytes) for im in images):
        raise FileFormatError(f"{path}: the images must be encoded bytes (JPEG/PNG); it is not an insightface .bin pack.")
    issame = _pair_labels(issame, path)
    if len(images) != 2 * issame.shape[0]:
        raise FileFormatError(
            f"{path} holds {len(images)} images for {issame.shape[0]} pair labels; a pack needs exactly two images "
            f"per pair (images 2i and 2i+1 form pair i). The file is damaged or was written wrongly; rebuild it."
        )
    if issame.shape[0] < NUM_FOLDS:
        raise FileFormatError(f"{path} holds {issame.shape[0]} pairs; the 10-fold protocol needs at least {NUM_FOLDS}.")
    pack = BinPack(path.stem, images, issame)
    for i, image in enumerate(images):  # headers only: a bomb is refused before any model is loaded
        image_size(image, f"{path}: {pack.record(i)}")
    return pack


def _pair_labels(issame, path: Path) -> np.ndarray:
    """The pair labels as a bool array; anything but booleans (0/1, strings, floats, None) is refused,
    since numpy would read every non-zero value as "same" and the accuracy would be silently wrong."""
    if isinstance(issame, np.ndarray):
        if issame.dtype == bool:
            return issame.reshape(-1)
        values = issame.reshape(-1).tolist()
    elif isinstance(issame, (list, tuple)):
        values = issame
    else:
        raise FileFormatError(
            f"{path}: the pair labels are a {type(issame).__name__}, not a list of booleans; it is not an insightface "
            ".bin pack. Rebuild it with `synthface eval make-bin` or synthface.fr.benchmarks.bin.write_bin."
        )
    bad = next((i for i, v in enumerate(values) if not isinstance(v, (bool, np.bool_))), None)
    if bad is not None:
        raise FileFormatError(
            f"{path}: pair label {bad} is {values[bad]!r} ({type(values[bad]).__name__}), not a boolean; an insightface "
            ".bin pack labels each pair True (same person) or False. Rebuild it with `synthface eval make-bin` or "
            "synthface.fr.benchmarks.bin.write_bin, which write booleans."
        )
    return np.array(values, dtype=bool).reshape(-1)


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool], *, protocol: int = 2) -> Path:
    """Write a pack the way insightface does (pickle of (list of bytes, list of bool)); for tests and custom sets."""
    if len(images) != 2 * len(issame):
        raise InvalidInputError(f"{len(images)} images for {len(issame)} pairs; a pack needs two images per pair.")
    path = Path(path)
    with open(path, "wb") as handle:
        pickle.dump(([bytes(b) for b in images], [bool(s) for s in issame]), handle, protocol=protocol)
    return path


def image_size(data: bytes, what: str = "image", *, max_pixels: int = BIN_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an encoded image, read from its header alone; a FileFormatError naming `what`
    for bytes that are not an image and for an image of more than `max_pixels` pixels (a decompression
    bomb: a few kilobytes of PNG can declare gigabytes of pixels), before anything is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # beyond PIL's own limit, far beyond ours
        raise FileFormatError(
            f"{what} declares more than {max_pixels:,} pixels ({exc}), far more than a face crop in a verification pack "
            "may have (a guard against decompression bombs; the packs hold 112 x 112 crops). The .bin pack is damaged "
            "or not a verification pack; rebuild it with `synthface eval make-bin`."
        ) from None
    except Exception as exc:  # PIL's UnidentifiedImageError, a truncated header, a bomb beyond PIL's own limit
        raise FileFormatError(
            f"{what} is not a readable JPEG/PNG image ({type(exc).__name__}); the .bin pack is corrupt. Copy it again "
            "or rebuild it with `synthface eval make-bin`."
        ) from None
    if width * height > max_pixels or width <= 0 or height <= 0:
        raise FileFormatError(
            f"{what} declares {width} x {height} = {width * height:,} pixels, more than the {max_pixels:,} a face "
            "crop in a verification pack may have (a guard against decompression bombs; the packs hold 112 x 112 "
            "crops). The .bin pack is damaged or not a verification pack; rebuild it with `synthface eval make-bin`."
        )
    return width, height


def decode_image(data: bytes, size: int, what: str = "image") -> np.ndarray:
    """Encoded bytes -> (size, size, 3) uint8 RGB; resized (area interpolation) when not size x size.
    The header is checked first (`image_size`), so an oversized image is refused without being decoded."""
    import cv2

    image_size(data, what)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileFormatError(f"{what} cannot be decoded; the .bin pack is corrupt.")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return rgb


# ----------------------------------------------------------------------------------------------- the protocol


def fold_bounds(n: int, folds: int = NUM_FOLDS) -> np.ndarray:
    """Start offsets of sklearn's KFold(folds, shuffle=False) plus n: the first n % folds folds are one longer."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair (rows 2i and 2i+1), float32 as insightface computes it."""
    e = np.asarray(embeddings, dtype=np.float32)
    return np.sum(np.square(e[0::2] - e[1::2]), axis=1)


@dataclass(frozen=True)
class Accuracy:
    """10-fold accuracy: mean, population std, the per-fold accuracies and chosen thresholds."""

    mean: float
    std: float
    fold_accuracy: tuple[float, ...]
    thresholds: tuple[float, ...]


def ten_fold_accuracy(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> Accuracy:
    """insightface's calculate_roc accuracy, vectorised: one (thresholds x pairs) pass, exact ties kept."""
    dist, issame = np.asarray(dist), np.asarray(issame, dtype=bool)
    bounds = fold_bounds(dist.shape[0])
    correct = (dist[None, :] < thresholds[:, None]) == issame[None, :]  # (T, N)
    per_fold = np.add.reduceat(correct, bounds[:-1], axis=1)  # (T, folds) correct counts
    sizes = np.diff(bounds)
    train = per_fold.sum(axis=1, keepdims=True) - per_fold  # same denominator per fold: counts rank like accuracies
    best = np.argmax(train, axis=0)  # the first best threshold
    acc = per_fold[best, np.arange(len(sizes))] / sizes
    return Accuracy(float(acc.mean()), float(acc.std()), tuple(acc.tolist()), tuple(thresholds[best].tolist()))


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Threshold whose FAR is `target` on a non-decreasing FAR curve, interpolated linearly; equal FARs
    collapse to their largest threshold. 0 when no threshold reaches `target` (insightface's rule)."""
    if far.max() < target:
        return 0.0
    last = np.r_[far[1:] != far[:-1], True]  # the last threshold of each run of equal FARs
    return float(np.interp(target, far[last], thresholds[last]))


def tar_at_far(dist: np.ndarray, issame: np.ndarray, target: float = TAR_FAR, thresholds: np.ndarray = THRESHOLDS) -> tuple[float, float, float]:
    """(mean TAR, its std, mean FAR) over the 10 folds at the threshold the other folds give FAR `target`."""
    dist, issame = np.asarray(dist), np.asarray(issame, dtype=bool)
    bounds = fold_bounds(dist.shape[0])
    tars, fars = [], []
    for k in range(NUM_FOLDS):
        test = np.zeros(dist.shape[0], bool)
        test[bounds[k] : bounds[k + 1]] = True
        d, s = dist[~test], issame[~test]
        far_curve = ((d[None, :] < thresholds[:, None]) & ~s).sum(1) / max((~s).sum(), 1)
        t = threshold_at_far(far_curve, thresholds, target)
        accept, same = dist[test] < t, issame[test]
        tars.append((accept & same).sum() / max(same.sum(), 1))
        fars.append((accept & ~same).sum() / max((~same).sum(), 1))
    return float(np.mean(tars)), float(np.std(tars)), float(np.mean(fars))


# ----------------------------------------------------------------------------------------------- embedding


def embed_pack(recognizer: Recognizer, pack: BinPack, *, chunk: int = 1024, flip: bool = True) -> np.ndarray:
    """(2N, D) unit-norm float32 embeddings: normalise(f(x) + f(flip(x))), decoded chunk by chunk."""
    out = []
    for start in range(0, len(pack.images), chunk):
        crops = pack.decode(start, min(start + chunk, len(pack.images)), recognizer.input_size)
        emb = recognizer.forward(crops).astype(np.float32)
        if flip:
            emb = emb + recognizer.forward(np.ascontiguousarray(crops[:, :, ::-1])).astype(np.float32)
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            first = start + int(np.argmin(finite))
            raise FileFormatError(
                f"{recognizer.description} gives a non-finite embedding (NaN or infinity) for {pack.record(first)}: its "
                "weights overflow on real input (a diverged training run or a damaged file). Evaluate an earlier "
                "checkpoint or another model."
            )
        out.append(emb)
    emb = np.concatenate(out)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------- sets and results


@dataclass(frozen=True)
class SetResult:
    """One set's numbers; `accuracy` and `std` are fractions (multiply by 100 for the papers' tables),
    `threshold` the mean of the ten chosen distance thresholds, `tar_at_far`/`far` at FAR 1e-3."""

    name: str
    pairs: int
    accuracy: float
    std: float
    threshold: float
    tar_at_far: float
    far: float
    fold_accuracy: tuple[float, ...] = field(default=())


def pack_keys(pack: BinPack) -> list[str]:
    """Cache keys of a pack's images: where each is (for messages) and a digest of its bytes, so a rebuilt
    pack, or another folder's pack of the same name, is embedded again."""
    import hashlib

    return [f"{pack.record(i)}, content {hashlib.sha1(image).hexdigest()[:16]}" for i, image in enumerate(pack.images)]


def embed_cached(recognizer: Recognizer, pack: BinPack, *, flip: bool = True, cache=None, progress=None) -> np.ndarray:
    """`embed_pack` through embeddings.embed: the same unit-norm embeddings, cached and reported to `progress`."""
    from synthface.fr.benchmarks.embeddings import embed

    size = recognizer.input_size
    raw = embed(recognizer, lambda index: np.stack([decode_image(pack.images[i], size, pack.record(i)) for i in index]),
                pack_keys(pack), flip=flip, cache=cache, progress=progress, what="the")
    return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)


def verify_pack(recognizer: Recognizer, pack: BinPack, *, flip: bool = True, cache=None, progress=None) -> SetResult:
    dist = pair_distances(embed_cached(recognizer, pack, flip=flip, cache=cache, progress=progress))
    acc = ten_fold_accuracy(dist, pack.issame)
    tar, _, far = tar_at_far(dist, pack.issame)
    return SetResult(pack.name, pack.pairs, acc.mean, acc.std, float(np.mean(acc.thresholds)), tar, far, acc.fold_accuracy)


def find_bins(bins_dir: str | Path, sets: Sequence[str] | None = None) -> list[Path]:
    """The `<name>.bin` files to evaluate: `sets` (each must exist) or every standard set present, in order."""
    bins_dir = Path(bins_dir)
    if not bins_dir.is_dir():
        raise FileFormatError(f"The verification folder {bins_dir} does not exist. {WHERE_BINS}")
    if sets:
        names = [s.removesuffix(".bin") for s in sets]
        missing = [n for n in names if not (bins_dir / f"{n}.bin").is_file()]
        if missing:
            present = sorted(p.stem for p in bins_dir.glob("*.bin"))
            raise FileFormatError(
                f"{bins_dir} has no {', '.join(n + '.bin' for n in missing)} (it holds: {', '.join(present) or 'no .bin files'}). "
                f"Name sets that are there, or leave --sets out to use every standard set present. {WHERE_BINS}"
            )
    else:
        names = [n for n in STANDARD_SETS if (bins_dir / f"{n}.bin").is_file()]
        if not names:
            names = sorted(p.stem for p in bins_dir.glob("*.bin"))
        if not names:
            raise FileFormatError(f"{bins_dir} holds no .bin files. {WHERE_BINS}")
    return [bins_dir / f"{n}.bin" for n in names]


def evaluate(recognizer: Recognizer, bins: Sequence[Path | BinPack], *, flip: bool = True, cache=None, progress=None) -> dict:
    """results.json's content: {"sets": {name: SetResult fields}, "average": mean accuracy over them, ...}.
    `cache` (embeddings.EmbeddingCache) keeps each image's embedding by its bytes; `progress(n)` counts images."""
    results = {}
    for item in bins:
        pack = item if isinstance(item, BinPack) else read_bin(item)
        results[pack.name] = asdict(verify_pack(recognizer, pack, flip=flip, cache=cache, progress=progress))
    average = float(np.mean([r["accuracy"] for r in results.values()])) if results else math.nan
    return {
        "model": recognizer.description, "protocol": "insightface 10-fold, flip-sum, squared L2", "flip": flip,
        "sets": results, "average": average,
    }


#: The protocol in the benchmark registry (synthface.fr.benchmarks): `synthface eval` and `synthface
#: train --eval-bins` look it up by this name.
BENCHMARK = Benchmark(
    name="bin",
    description=__doc__.splitlines()[0],
    find=find_bins,
    load=read_bin,
    evaluate=evaluate,
    headline="accuracy",
    columns=(("accuracy %", "accuracy", 100), ("std", "std", 100), ("TAR@FAR1e-3 %", "tar_at_far", 100), ("pairs", "pairs", None)),
    size=lambda packs: sum(2 * read_bin(p).pairs if not isinstance(p, BinPack) else len(p.images) for p in packs),
    expects="a folder of insightface .bin packs (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin or any <name>.bin; "
            "they come inside insightface's training-set archives such as faces_emore or faces_webface_112x112)",
)
