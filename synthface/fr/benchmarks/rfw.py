"""RFW (Racial Faces in-the-Wild): per-race 1:1 verification, insightface's 10-fold accuracy, mean, std, trade-off.

PATH is either the RFW root (or its `test/` folder):

    test/data/<Race>/<id>/<id>_<NNNN>.jpg        loose 400 x 400 crops
    test/txts/<Race>/<Race>_pairs.txt            `id n1 n2` (genuine) or `id1 n1 id2 n2` (impostor), tab separated
    test/txts/<Race>/<Race>_lmk.txt              `path label x1 y1 ... x5 y5`, keyed by the file stem

or a folder of `<Race>_test.bin` packs (insightface .bin, aligned crops; read through bin.py), for the races
African, Asian, Caucasian and Indian. Per race: each image of the folder route is aligned with its five
landmarks by insightface's similarity `norm_crop` (the recogniser's input size, RGB), every image is embedded
as L2-normalise(f(x) + f(mirror x)), pairs are scored by squared L2 distance, and the accuracy is insightface's
10-fold protocol on the file order (bin.ten_fold_accuracy: the pairs come in 10 blocks of 300 genuine then
300 impostor, so the folds are LFW's). Over the races: `mean`, `std` = the SAMPLE standard deviation
(ddof=1, TFace's verification_rfw.py, the RFW evaluation code FR-EVAL.md names; FRCSyn's ranking by
trade-off does not state its ddof), `std_population` (ddof=0) beside it, and `tradeoff` = mean - std
(FRCSyn's "Trade-off = AVG - STD"). All numbers are fractions (the papers print percent).

Unlike TFace's own script, thresholds are insightface's 0 .. 3.99 (TFace searches -1 .. 1 on the squared
distance, so it never accepts a pair beyond cosine 0.5). Both routes give the same numbers for the same
crops (the packs' JPEG re-encoding aside). RFW is licensed (whdeng.cn/RFW) and never downloaded.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.benchmarks import bin as binpacks
from synthface.fr.benchmarks.embeddings import EmbeddingCache, embed
from synthface.fr.benchmarks.recognizers import Recognizer
from synthface.fr.benchmarks.registry import Benchmark
from synthface.fr.benchmarks.tinyface import file_key, read_rgb

GROUPS = ("African", "Asian", "Caucasian", "Indian")
STD_CONVENTION = "sample (ddof=1), as TFace's verification_rfw.py; std_population is ddof=0"
WHERE_RFW = (
    "RFW is licensed and not shipped with synthface (request it at whdeng.cn/RFW). Pass the RFW root, which holds "
    "test/data/<Race>/ and test/txts/<Race>/<Race>_pairs.txt and <Race>_lmk.txt for African, Asian, Caucasian and "
    "Indian, or a folder of African_test.bin, Asian_test.bin, Caucasian_test.bin and Indian_test.bin."
)


@dataclass(frozen=True)
class RfwGroup:
    """One race as found: the folder route (`data`, `pairs_file`, `lmk_file`) or the .bin route (`bin_file`)."""

    name: str
    data: Path | None = None
    pairs_file: Path | None = None
    lmk_file: Path | None = None
    bin_file: Path | None = None


@dataclass(frozen=True)
class RfwPairs:
    """One race read and checked: pair i is images (first[i], second[i]) of `images`, each with its 5 points."""

    name: str
    images: tuple[Path, ...]
    landmarks: np.ndarray  # (n_images, 5, 2) float32
    first: np.ndarray
    second: np.ndarray
    issame: np.ndarray


# ----------------------------------------------------------------------------------------------- the layout


def _test_root(folder: Path) -> Path | None:
    for candidate in (folder / "test", folder):
        if (candidate / "data").is_dir() or (candidate / "txts").is_dir():
            return candidate
    return None


def _bin_files(folder: Path) -> dict[str, Path]:
    by_lower = {p.name.lower(): p for p in folder.glob("*.bin") if p.is_file()}
    return {g: by_lower[f"{g.lower()}_test.bin"] for g in GROUPS if f"{g.lower()}_test.bin" in by_lower}


def find(folder: str | os.PathLike, sets: Sequence[str] | None = None) -> list[RfwGroup]:
    """The races to evaluate (`sets`: a subset of GROUPS, default all four), each checked present with every
    file it needs; a missing race names what was expected where."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileFormatError(f"The RFW folder {folder} does not exist. {WHERE_RFW}")
    names = list(GROUPS)
    if sets:
        by_lower = {g.lower(): g for g in GROUPS}
        unknown = [s for s in sets if s.lower() not in by_lower]
        if unknown:
            raise InvalidInputError(f"RFW has no group {', '.join(unknown)}; choose from {', '.join(GROUPS)}.")
        names = [by_lower[s.lower()] for s in sets]
    test = _test_root(folder)
    if test is None:
        packs = _bin_files(folder)
        if not packs:
            raise FileFormatError(f"{folder} holds neither test/data/ and test/txts/ nor <Race>_test.bin packs. {WHERE_RFW}")
        missing = [f"{g}_test.bin" for g in names if g not in packs]
        if missing:
            raise FileFormatError(
                f"{folder} lacks {', '.join(missing)} (it holds {', '.join(p.name for p in packs.values())}). The four "
                f"races are scored together (mean, std, trade-off); add the missing pack(s), or name the races to score "
                f"with sets. {WHERE_RFW}"
            )
        return [RfwGroup(g, bin_file=packs[g]) for g in names]
    groups, missing = [], []
    for g in names:
        group = RfwGroup(g, test / "data" / g, test / "txts" / g / f"{g}_pairs.txt", test / "txts" / g / f"{g}_lmk.txt")
        missing += [str(group.data) + "/"] if not group.data.is_dir() else []
        missing += [str(p) for p in (group.pairs_file, group.lmk_file) if not p.is_file()]
        groups.append(group)
    if missing:
        raise FileFormatError(
            f"The RFW folder {folder} is incomplete: {', '.join(missing)} missing. Copy the release's test/ folder "
            f"whole (the races are scored together), or name the races to score with sets. {WHERE_RFW}"
        )
    return groups


def _lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{path} is not a UTF-8 text file (byte {exc.start}); it is damaged. Copy it again.") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line.split()


def read_landmarks(path: Path) -> dict[str, np.ndarray]:
    """`<Race>_lmk.txt` -> {file stem: (5, 2) float32 points}; a later line for the same stem wins."""
    out = {}
    for number, fields in _lines(path):
        try:
            if len(fields) != 12:
                raise ValueError
            points = np.array([float(v) for v in fields[2:]], np.float32).reshape(5, 2)
            if not np.isfinite(points).all():
                raise ValueError
        except ValueError:
            raise FileFormatError(
                f"{path}, line {number}: expected an image path, a label and five finite x y points (12 fields "
                f"separated by tabs or spaces), got {len(fields)} field(s): {' '.join(fields)[:120]!r}. Fix or remove "
                "the line, or copy the file again from the release."
            ) from None
        out[Path(fields[0].replace("\\", "/")).stem] = points
    return out


def _read_pairs(group: RfwGroup) -> list[tuple[str, int, str, int, bool, int]]:
    pairs = []
    for number, fields in _lines(group.pairs_file):
        try:
            if len(fields) == 3:
                pairs.append((fields[0], int(fields[1]), fields[0], int(fields[2]), True, number))
            elif len(fields) == 4:
                pairs.append((fields[0], int(fields[1]), fields[2], int(fields[3]), False, number))
            else:
                raise ValueError
        except ValueError:
            raise FileFormatError(
                f"{group.pairs_file}, line {number}: expected 'id n1 n2' (a genuine pair) or 'id1 n1 id2 n2' (an "
                f"impostor pair) with integer image numbers, got {' '.join(fields)[:120]!r}. Fix or remove the line, or "
                "copy the file again from the release."
            ) from None
    if len(pairs) < binpacks.NUM_FOLDS:
        raise FileFormatError(
            f"{group.pairs_file} lists {len(pairs)} pair(s); the 10-fold protocol needs at least {binpacks.NUM_FOLDS} "
            "(the release lists 6,000 per race). Copy the file again from the release."
        )
    return pairs


def load(group: RfwGroup) -> RfwPairs | binpacks.BinPack:
    """Read and check one race: its pairs, landmarks and that every image exists (or its .bin pack)."""
    if group.bin_file is not None:
        return binpacks.read_bin(group.bin_file)
    landmarks = read_landmarks(group.lmk_file)
    index: dict[str, int] = {}
    images, points, first, second, issame, missing, unmarked = [], [], [], [], [], [], []

    def image(ident: str, n: int, line: int) -> int:
        stem = f"{ident}_{n:04d}"
        if stem not in index:
            path = group.data / ident / f"{stem}.jpg"
            if not path.is_file():
                missing.append((line, path))
            elif stem not in landmarks:
                unmarked.append((line, stem))
            index[stem] = len(images)
            images.append(path)
            points.append(landmarks.get(stem, np.zeros((5, 2), np.float32)))
        return index[stem]

    for id1, n1, id2, n2, same, line in _read_pairs(group):
        first.append(image(id1, n1, line))
        second.append(image(id2, n2, line))
        issame.append(same)
    if missing:
        line, path = missing[0]
        raise FileFormatError(
            f"{group.pairs_file}, line {line} names {path}, which does not exist"
            + (f" ({len(missing) - 1} more images named there are missing too)" if len(missing) > 1 else "")
            + f". Copy test/data/{group.name}/ whole from the RFW release (images are <id>/<id>_<NNNN>.jpg)."
        )
    if unmarked:
        line, stem = unmarked[0]
        raise FileFormatError(
            f"{group.lmk_file} has no landmarks for {stem} (named by {group.pairs_file}, line {line})"
            + (f", nor for {len(unmarked) - 1} more of the race's images" if len(unmarked) > 1 else "")
            + ". Every image in a pair needs its five points to be aligned; copy the lmk file again from the release."
        )
    return RfwPairs(group.name, tuple(images), np.stack(points), np.array(first), np.array(second), np.array(issame, bool))


def total_images(items: Sequence[RfwGroup | RfwPairs | binpacks.BinPack]) -> int:
    """How many images `evaluate` embeds (for a progress bar's total); reads the pair lists."""
    return sum(len(_loaded(g).images) for g in items)


def _race(pack_name: str) -> str:
    """A pack's race: `african_test` -> African (other names are kept as they are)."""
    stem = pack_name.removesuffix("_test").removesuffix("_TEST")
    return {g.lower(): g for g in GROUPS}.get(stem.lower(), stem)


def _loaded(item):
    return load(item) if isinstance(item, RfwGroup) else item


# ----------------------------------------------------------------------------------------------- the protocol


def _group_embeddings(recognizer: Recognizer, group: RfwPairs | binpacks.BinPack, *, flip: bool, cache, progress) -> np.ndarray:
    """Unit-norm embeddings of the group's pairs, rows 2i and 2i+1 = pair i (bin.pair_distances' layout)."""
    size = recognizer.input_size
    if isinstance(group, binpacks.BinPack):
        keys = [f"{group.name}.bin|{i}|{hashlib.sha1(b).hexdigest()}|{size}|flip={flip}" for i, b in enumerate(group.images)]

        def load_crops(index: np.ndarray) -> np.ndarray:
            return np.stack([binpacks.decode_image(group.images[int(i)], size, group.record(int(i))) for i in index])

        order = np.arange(len(group.images))
    else:
        from synthface.faces import norm_crop

        keys = [file_key(p, size, ",".join(f"{v:.3f}" for v in kp.ravel()), f"flip={flip}") for p, kp in zip(group.images, group.landmarks)]

        def load_crops(index: np.ndarray) -> np.ndarray:
            return np.stack([norm_crop(read_rgb(group.images[int(i)]), group.landmarks[int(i)], size) for i in index])

        order = np.stack([group.first, group.second], axis=1).reshape(-1)
    emb = embed(recognizer, load_crops, keys, flip=flip, cache=cache, progress=progress, what=f"RFW {group.name} image")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb[order]


def evaluate(recognizer: Recognizer, items: Sequence[RfwGroup | RfwPairs | binpacks.BinPack] | str | os.PathLike, *,
             flip: bool = True, cache: EmbeddingCache | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """results.json's rfw section: {"groups": {race: {"accuracy", ...}}, "mean", "std", "tradeoff", ...}."""
    if isinstance(items, (str, os.PathLike)):
        items = find(items)
    groups = {}
    for item in items:
        group = _loaded(item)
        name = item.name if isinstance(item, (RfwGroup, RfwPairs)) else _race(group.name)
        issame = group.issame
        dist = binpacks.pair_distances(_group_embeddings(recognizer, group, flip=flip, cache=cache, progress=progress))
        acc = binpacks.ten_fold_accuracy(dist, issame)
        groups[name] = {"accuracy": acc.mean, "fold_std": acc.std, "pairs": int(len(issame)),
                        "threshold": float(np.mean(acc.thresholds)), "fold_accuracy": list(acc.fold_accuracy)}
    accuracies = np.array([g["accuracy"] for g in groups.values()], np.float64)
    mean = float(accuracies.mean()) if len(accuracies) else math.nan
    std = float(accuracies.std(ddof=1)) if len(accuracies) > 1 else math.nan
    return {
        "groups": groups, "mean": mean, "std": std, "std_convention": STD_CONVENTION,
        "std_population": float(accuracies.std(ddof=0)) if len(accuracies) else math.nan, "tradeoff": mean - std,
        "flip": flip, "model": recognizer.description,
        "protocol": "RFW per race: 5-point alignment, RGB, flip sum, L2, squared distance, insightface 10-fold accuracy",
    }


def rows(section: dict) -> list[tuple[str, str]]:
    """(label, value) rows of a results section for a table: each race's accuracy, then mean, std, trade-off (%)."""
    out = [(name, f"{100 * g['accuracy']:.2f} %") for name, g in section.get("groups", {}).items()]
    out += [(label, f"{100 * section[key]:.2f} %") for label, key in
            (("mean", "mean"), ("std (sample)", "std"), ("trade-off", "tradeoff")) if key in section]
    return out


BENCHMARK = Benchmark(
    name="rfw",
    description=__doc__.splitlines()[0],
    find=find,
    load=load,
    evaluate=evaluate,
    headline="accuracy",
    columns=(("accuracy %", "accuracy", 100), ("pairs", "pairs", None)),
)
