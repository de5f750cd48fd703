"""Make an insightface-layout verification `.bin` from your own photos, offline (`synthface eval make-bin`).

The input is a folder of identity subfolders (`photos/alice/*.jpg`, `photos/bob/*.jpg`, ...). Each
photo's largest face is detected and aligned to the ArcFace template as a 112 x 112 crop by one of
the package's face analysers (dlib, the offline default, needs no download). Genuine pairs are two
photos of one folder, impostor pairs two photos of different folders, both drawn with `seed`;
they alternate in the pack so that every one of the protocol's ten contiguous folds holds both
kinds. The result is what `synthface eval` reads: a pickle of (2N encoded crops, N booleans).
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import ImageError, InvalidInputError
from synthface.fr.benchmarks.bin import NUM_FOLDS, write_bin

#: File names taken as photos (case folded); anything else in an identity folder is ignored.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: How the crops in a pack may be encoded (not to be confused with export formats).
IMAGE_FORMATS = ("jpg", "png")
CROP_SIZE = 112
#: Most impostor candidates drawn per requested pair before the search gives up (small folders).
_DRAWS_PER_PAIR = 20


@dataclass(frozen=True)
class MadeBin:
    """What `make_bin` wrote: `pairs` are (photo, photo, same) in pack order, photos relative to the folder;
    `skipped` the photos left out, with the reason (no face, unreadable)."""

    path: Path
    pairs: tuple[tuple[str, str, bool], ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def genuine(self) -> int:
        return sum(same for _, _, same in self.pairs)

    @property
    def impostor(self) -> int:
        return len(self.pairs) - self.genuine


def identity_folders(folder: str | Path) -> dict[str, list[Path]]:
    """identity name -> its photos (sorted), from `folder`'s subfolders (sorted); an InvalidInputError for a
    missing folder or one without identity subfolders holding photos."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(
            f"{folder} is not a folder. Pass a folder of identity subfolders (photos/alice/1.jpg, photos/bob/1.jpg, ...)."
        )
    identities = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        if photos:
            identities[sub.name] = photos
    if len(identities) < 2:
        loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES][:3]
        hint = f" (it holds photos directly, e.g. {', '.join(loose)}: move each person's photos into a subfolder)" if loose else ""
        raise InvalidInputError(
            f"{folder} has {len(identities)} identity subfolder{'s' if len(identities) != 1 else ''} with photos{hint}; "
            "impostor pairs need at least two people and genuine pairs two photos of one. Lay it out as "
            "photos/alice/1.jpg, photos/alice/2.jpg, photos/bob/1.jpg, ..."
        )
    return identities


def aligned_crops(identities: dict[str, list[Path]], analyzer) -> tuple[dict[str, list[tuple[Path, np.ndarray]]], list[tuple[Path, str]]]:
    """Per identity, (photo, its largest face aligned to 112 x 112 uint8 RGB); and the photos skipped, with why."""
    from synthface.faces import load_image
    from synthface.faces.align import norm_crop

    crops, skipped = {}, []
    for name, photos in identities.items():
        kept = []
        for photo in photos:
            try:
                image = load_image(photo)
            except ImageError as exc:
                skipped.append((photo, str(exc)))
                continue
            faces = analyzer.detect([image])[0]
            if not faces:
                skipped.append((photo, "no face found"))
                continue
            kept.append((photo, norm_crop(image, faces[0].kps, CROP_SIZE)))
        crops[name] = kept
    return crops, skipped


def choose_pairs(counts: dict[str, int], pairs: int, seed: int) -> list[tuple[tuple[str, int], tuple[str, int], bool]]:
    """Up to `pairs` genuine and as many impostor pairs of (identity, photo index), drawn with `seed`, alternating.

    Genuine pairs are drawn without repetition from every two photos of one identity; impostor pairs
    without repetition from two photos of two identities. Both kinds come in equal numbers (the
    smaller of what is requested and what the photos allow)."""
    rng = np.random.default_rng(seed)
    genuine = [((n, i), (n, j), True) for n, c in counts.items() for i, j in itertools.combinations(range(c), 2)]
    genuine = [genuine[k] for k in rng.permutation(len(genuine))[:pairs]]
    names = [n for n, c in counts.items() if c]
    possible = sum(counts[a] * counts[b] for a, b in itertools.combinations(names, 2))
    wanted = min(len(genuine), possible)
    impostor, seen = [], set()
    for _ in range(_DRAWS_PER_PAIR * max(wanted, 1)):
        if len(impostor) == wanted:
            break
        a, b = sorted(rng.choice(len(names), 2, replace=False))
        key = ((names[a], int(rng.integers(counts[names[a]]))), (names[b], int(rng.integers(counts[names[b]]))))
        if key not in seen:
            seen.add(key)
            impostor.append((*key, False))
    n = min(len(genuine), len(impostor))
    return [p for g, i in zip(genuine[:n], impostor[:n]) for p in (g, i)]


def encode(crop: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """One crop as JPEG (what insightface's packs hold) or lossless PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(crop).save(buf, "PNG")
    else:
        Image.fromarray(crop).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_bin(folder: str | Path, out: str | Path, *, analyzer="dlib", pairs: int = 3000, seed: int = 0,
             fmt: str = "jpg", overwrite: bool = False) -> MadeBin:
    """Write `out`, a verification `.bin` of up to `pairs` genuine and as many impostor pairs from the photos
    in `folder`'s identity subfolders (see the module docstring), and say what went in.

    `analyzer`: a face analyser, or the name of a registered one (default "dlib", offline), built once the
    arguments, the folder and `out` are checked. The file is written atomically; an existing `out` is
    refused unless `overwrite`. Raises InvalidInputError for bad arguments, a folder without two identity
    subfolders, or photos that do not give at least 10 pairs of both kinds (the message says what is
    missing), OutputPathError for an unusable `out`.
    """
    from synthface.errors import OutputPathError
    from synthface.faces import get_analyzer, require_registered
    from synthface.io import atomic_path, check_output_path

    if fmt not in IMAGE_FORMATS:
        raise InvalidInputError(f"format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}.")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise InvalidInputError(f"pairs (genuine pairs wanted; as many impostor pairs are added) must be a positive integer, got {pairs!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}.")
    if isinstance(analyzer, str):
        require_registered(analyzer)
    out = check_output_path(out)
    if out.exists() and not overwrite:
        raise OutputPathError(f"{out} already exists. Choose another name, or pass --overwrite to replace it.")
    identities = identity_folders(folder)
    if isinstance(analyzer, str):
        analyzer = get_analyzer(analyzer)
    with atomic_path(out) as staged:  # made now: a full or read-only disk is refused before the detection work
        crops, skipped = aligned_crops(identities, analyzer)
        chosen = choose_pairs({n: len(c) for n, c in crops.items()}, pairs, seed)
        if len(chosen) < NUM_FOLDS:
            with_two = sum(len(c) >= 2 for c in crops.values())
            raise InvalidInputError(
                f"The photos in {folder} give {len(chosen) // 2} genuine and {len(chosen) // 2} impostor pairs; the 10-fold "
                f"protocol needs at least {NUM_FOLDS} pairs (5 of each). {sum(map(len, crops.values()))} photos had a face, "
                f"in {with_two} folder(s) with two or more and {sum(bool(c) for c in crops.values())} with one or more"
                f"{f'; {len(skipped)} were skipped (no face or unreadable)' if skipped else ''}. Add photos: at least "
                "two people, and two or more photos of some of them."
            )
        images = [encode(crops[name][k][1], fmt) for a, b, _ in chosen for name, k in (a, b)]
        write_bin(staged, images, [same for _, _, same in chosen])
    root = Path(folder)
    return MadeBin(
        out,
        tuple((str(crops[a[0]][a[1]][0].relative_to(root)), str(crops[b[0]][b[1]][0].relative_to(root)), same)
              for a, b, same in chosen),
        tuple((str(p.relative_to(root)), why) for p, why in skipped),
    )
