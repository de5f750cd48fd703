"""TinyFace 1:N closed-set identification (native low resolution), AdaFace's / CVLface's protocol exactly.

PATH is the aligned test split, AdaFace's `aligned_pad_0.1_pad_high` (112 x 112 crops, MTCNN-aligned after
a 10 % pad), holding `Probe/`, `Gallery_Match/` and `Gallery_Distractor/`; images at any depth below them
(one copy keeps the distractors in sub-folders). A folder holding `aligned_pad_0.1_pad_high/` is accepted
too. The protocol, as AdaFace's validate_tinyface.py and CVLface's tinyface evaluator run it:

- every .jpg / .jpeg / .png below each folder is an image, indexed by its file stem (a stem used twice is
  refused: the reference would silently keep one of the two images);
- probe and gallery-match labels are the integer before the first `_` of the file name (`12_3.jpg` is
  identity 12); every distractor is labelled -100 and never matches a probe, whatever its name says;
- the gallery is the matches followed by the distractors; each image is embedded as
  L2-normalise(f(x) + f(mirror x)) (AdaFace's fusion `pre_norm_vector_add`), scores are inner products;
- closed-set identification (PFE's DIR at FAR 1): only probes with a mate in the gallery count; a probe
  hits rank k when a mate is among its k highest-scoring gallery images; the rate is the float32 mean.
  Reported for ranks 1, 5 and 20 as fractions (the papers print percent).

Images are decoded to RGB, since synthface recognisers take RGB (AdaFace reads with cv2 and feeds BGR
because its models were trained on BGR). Scores are computed gallery chunk by gallery chunk, so the
153,428 distractors never make a probes x gallery matrix; an exact tie between a mate's score and another
gallery image counts in the mate's favour (the reference's argsort leaves ties in an unspecified order).

The set is licensed (qmul-tinyface.github.io; the aligned copy through AdaFace's form) and never downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.benchmarks.embeddings import EmbeddingCache, embed
from synthface.fr.benchmarks.recognizers import Recognizer
from synthface.fr.benchmarks.registry import Benchmark

SUBSETS = ("Probe", "Gallery_Match", "Gallery_Distractor")
ALIGNED = "aligned_pad_0.1_pad_high"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RANKS = (1, 5, 20)
DISTRACTOR_LABEL = -100
#: Gallery images scored per step (probes x GALLERY_CHUNK float32 scores live at once).
GALLERY_CHUNK = 8192
WHERE_TINYFACE = (
    "TinyFace is licensed and not shipped with synthface: take the test split from qmul-tinyface.github.io and "
    f"its aligned copy ({ALIGNED}, 112 x 112, requested through the form in AdaFace's validation_lq/README.md), "
    f"and pass the folder holding {', '.join(s + '/' for s in SUBSETS)}."
)


@dataclass(frozen=True)
class TinyFaceSplit:
    """The aligned test split: image paths (relative to `root`, sorted) and the probe / match labels."""

    root: Path
    probes: tuple[str, ...]
    matches: tuple[str, ...]
    distractors: tuple[str, ...]
    probe_labels: tuple[int, ...]
    match_labels: tuple[int, ...]

    @property
    def images(self) -> tuple[str, ...]:
        """Every image once, probes then matches then distractors (the embedding order)."""
        return self.probes + self.matches + self.distractors


# ----------------------------------------------------------------------------------------------- images


def read_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, decoded by OpenCV as the references do; resized (area) to
    size x size when given and different. Empty, unreadable and oversized files raise FileFormatError
    naming the file (the size is read from the header before anything is decoded)."""
    import cv2
    from PIL import Image

    from synthface.errors import ImageError
    from synthface.faces.image import check_image_bounds

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"Cannot read {path}: {exc.strerror or exc}. Check the file's permissions, or copy it again.") from None
    if not data:
        raise FileFormatError(f"{path} is empty (0 bytes): the copy was cut off. Copy the file again from the release.")
    try:
        import io

        with Image.open(io.BytesIO(data)) as img:
            check_image_bounds(img.width, img.height, str(path))
    except ImageError as exc:
        raise FileFormatError(str(exc)) from None
    except Exception as exc:  # PIL's UnidentifiedImageError, a truncated header, a bomb beyond PIL's limit
        raise FileFormatError(
            f"{path} is not a readable JPEG/PNG image ({type(exc).__name__}); the file is damaged. Copy it again from "
            "the release."
        ) from None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileFormatError(f"{path} cannot be decoded as an image; the file is damaged. Copy it again from the release.")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return rgb


def file_key(path: Path, *extra: object) -> str:
    """What an embedding of `path` depends on: the path, its size and modification time, and `extra`."""
    st = path.stat()
    return "|".join([path.as_posix(), str(st.st_size), str(st.st_mtime_ns), *map(str, extra)])


# ----------------------------------------------------------------------------------------------- the layout


def _split_root(folder: Path) -> Path:
    if not folder.is_dir():
        raise FileFormatError(f"The TinyFace folder {folder} does not exist. {WHERE_TINYFACE}")
    for candidate in (folder, folder / ALIGNED):
        if all((candidate / s).is_dir() for s in SUBSETS):
            return candidate
    if (folder / "Testing_Set").is_dir() or (folder / "tinyface" / "Testing_Set").is_dir():
        raise FileFormatError(
            f"{folder} is the raw TinyFace release (Testing_Set/): its faces are ~20 px loose crops that must be aligned "
            f"first. Pass AdaFace's aligned copy ({ALIGNED}/) instead. {WHERE_TINYFACE}"
        )
    missing = [s + "/" for s in SUBSETS if not (folder / s).is_dir()]
    raise FileFormatError(f"{folder} has no {', '.join(missing)} (a TinyFace test split holds all three). {WHERE_TINYFACE}")


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.as_posix(),
    )


def _label(path: Path, root: Path) -> int:
    head = path.name.split("_")[0]
    try:
        return int(head)
    except ValueError:
        raise FileFormatError(
            f"{root / path} is named {path.name!r}: TinyFace probe and gallery-match files are named "
            "<identity>_<n>.<ext> and the identity (the integer before the first '_') is the label. Rename it, or "
            "move it out of the split (distractors, whose names carry no label, belong in Gallery_Distractor/)."
        ) from None


def find(folder: str | os.PathLike, sets: Sequence[str] | None = None) -> list[TinyFaceSplit]:
    """The aligned test split under `folder` (see the module docstring); `sets` is accepted for the registry's
    signature and must be empty or ("tinyface",)."""
    if sets and list(sets) != ["tinyface"]:
        raise InvalidInputError(f"TinyFace is one set; --sets {', '.join(sets)} does not apply (leave it out).")
    root = _split_root(Path(folder))
    lists = {s: _list_images(root / s) for s in SUBSETS}
    for subset in ("Probe", "Gallery_Match"):
        if not lists[subset]:
            raise FileFormatError(f"{root / subset} holds no .jpg/.jpeg/.png image at any depth. {WHERE_TINYFACE}")
    seen: dict[str, Path] = {}
    for path in (p for s in SUBSETS for p in lists[s]):
        if path.stem in seen:
            raise FileFormatError(
                f"{path} and {seen[path.stem]} share the stem {path.stem!r}: the TinyFace protocol indexes images by "
                "file stem, so the reference would silently score one of them twice. Remove the duplicate copy."
            )
        seen[path.stem] = path
    rel = {s: tuple(p.relative_to(root).as_posix() for p in lists[s]) for s in SUBSETS}
    return [TinyFaceSplit(
        root, rel["Probe"], rel["Gallery_Match"], rel["Gallery_Distractor"],
        tuple(_label(Path(p), root) for p in rel["Probe"]), tuple(_label(Path(p), root) for p in rel["Gallery_Match"]),
    )]


def load(split: TinyFaceSplit) -> TinyFaceSplit:
    """Check that every listed image still exists (images are read while embedding)."""
    missing = [p for p in split.images if not (split.root / p).is_file()]
    if missing:
        raise FileFormatError(
            f"{len(missing)} TinyFace image(s) listed earlier are gone from {split.root}, e.g. {missing[0]}. Copy the "
            "split again and rerun."
        )
    return split


def total_images(items: Sequence[TinyFaceSplit]) -> int:
    """How many images `evaluate` embeds (for a progress bar's total)."""
    return sum(len(s.images) for s in items)


# ----------------------------------------------------------------------------------------------- the protocol


def identification_rates(probes: np.ndarray, probe_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                         ranks: Sequence[int] = RANKS, chunk: int = GALLERY_CHUNK) -> tuple[dict[int, float], int]:
    """Closed-set rank-k identification rates of unit-norm `probes` against a unit-norm `gallery` (inner product)
    and the number of probes with a mate. Gallery labels < 0 never match. Bounded memory: probes x `chunk`."""
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    has_mate = np.isin(probe_labels, gallery_labels[gallery_labels >= 0])
    p, labels = probes[has_mate], probe_labels[has_mate]
    bounds = list(range(0, len(gallery), chunk))
    best = np.full(len(p), -np.inf, np.float32)
    kept: dict[int, np.ndarray] = {}
    for start in bounds:  # pass 1: each probe's best mate score
        g = gallery_labels[start : start + chunk]
        m = (labels[:, None] == g[None, :]) & (g[None, :] >= 0)
        if m.any():  # the matches' chunks (distractors never hold a mate): their scores are kept for pass 2
            kept[start] = s = p @ gallery[start : start + chunk].T
            best = np.maximum(best, np.where(m, s, -np.inf).max(axis=1))
    above = np.zeros(len(p), np.int64)
    for start in bounds:  # pass 2: how many gallery images score above that mate
        s = kept.pop(start) if start in kept else p @ gallery[start : start + chunk].T
        above += (s > best[:, None]).sum(axis=1)
    rates = {k: float((above < k).astype(np.float32).mean()) if len(p) else float("nan") for k in ranks}
    return rates, int(has_mate.sum())


def evaluate(recognizer: Recognizer, items: Sequence[TinyFaceSplit] | TinyFaceSplit | str | os.PathLike, *,
             flip: bool = True, cache: EmbeddingCache | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """results.json's tinyface section: {"rank-1", "rank-5", "rank-20"} (fractions) and the counts."""
    if isinstance(items, (str, os.PathLike)):
        items = find(items)
    split = items if isinstance(items, TinyFaceSplit) else _one(items)
    size = recognizer.input_size
    paths = [split.root / p for p in split.images]
    keys = [file_key(path, size, f"flip={flip}") for path in paths]

    def load_crops(index: np.ndarray) -> np.ndarray:
        return np.stack([read_rgb(paths[int(i)], size) for i in index])

    emb = embed(recognizer, load_crops, keys, flip=flip, cache=cache, progress=progress, what="TinyFace image")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n_probe, n_match = len(split.probes), len(split.matches)
    gallery_labels = np.concatenate([np.array(split.match_labels, np.int64), np.full(len(split.distractors), DISTRACTOR_LABEL)])
    rates, with_mate = identification_rates(emb[:n_probe], np.array(split.probe_labels, np.int64), emb[n_probe:], gallery_labels)
    if not with_mate:
        raise FileFormatError(
            f"No probe in {split.root / 'Probe'} has a mate in Gallery_Match/ (no probe label equals a gallery-match "
            "label), so closed-set identification is undefined. Check that both folders come from the same split."
        )
    return {
        **{f"rank-{k}": v for k, v in rates.items()},
        "probes": with_mate, "probes_without_mate": n_probe - with_mate, "gallery": n_match + len(split.distractors),
        "distractors": len(split.distractors), "flip": flip, "model": recognizer.description,
        "protocol": "TinyFace closed-set identification (AdaFace/CVLface): RGB, flip sum, L2, inner product, "
                    "distractors never match, float32 rank-k rates",
    }


def _one(items: Sequence[TinyFaceSplit]) -> TinyFaceSplit:
    if len(items) != 1:
        raise InvalidInputError(f"TinyFace evaluates one split; got {len(items)} items (pass what tinyface.find returns).")
    return items[0]


def rows(section: dict) -> list[tuple[str, str]]:
    """(label, value) rows of a results section for a table: the rates in percent, then the counts."""
    out = [(f"rank-{k}", f"{100 * section[f'rank-{k}']:.2f} %") for k in RANKS if f"rank-{k}" in section]
    out += [(name, f"{section[name]:,}") for name in ("probes", "gallery", "distractors") if name in section]
    return out


BENCHMARK = Benchmark(
    name="tinyface",
    description=__doc__.splitlines()[0],
    find=find,
    load=load,
    evaluate=evaluate,
    headline="rank-1",
    columns=(("rank-1 %", "rank-1", 100), ("rank-5 %", "rank-5", 100), ("rank-20 %", "rank-20", 100)),
)
