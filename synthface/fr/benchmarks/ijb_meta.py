"""IJB-B / IJB-C as insightface releases them: the folder layout, its three meta files, read and checked.

    IJBC/loose_crop/1.jpg ...                     loose face crops
    IJBC/meta/ijbc_face_tid_mid.txt               name template_id media_id        (one row per face)
    IJBC/meta/ijbc_name_5pts_score.txt            name x1 y1 ... x5 y5 score       (the same rows, same order)
    IJBC/meta/ijbc_template_pair_label.txt        template1 template2 label        (1 genuine, 0 impostor)

(IJBB: the same with `ijbb_`.) Rows are space separated, without a header; blank lines are skipped.
Every malformed row (a wrong number of fields, a non-numeric value, a label that is not 0 or 1, the two
face files disagreeing on a row's name, a pair naming a template no face belongs to, a missing image) is
refused with a FileFormatError naming the file and its line. The pair list (15.7 M rows for IJB-C) is
parsed by numpy in blocks and kept as int32 template indices and booleans (9 bytes a pair).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError

#: Pair and face counts of insightface's release (FR-EVAL.md section 1), to tell a full run from a subset.
RELEASE_PAIRS = {"ijbc": 15_658_489, "ijbb": 8_010_270}
RELEASE_FACES = {"ijbc": 469_375, "ijbb": 227_630}
#: Pair-list rows parsed per numpy call (bounded memory: ~24 bytes a row while parsing).
PAIR_BLOCK = 1 << 20
WHERE_IJB = (
    "IJB-B and IJB-C are licensed by NIST and never downloaded by synthface; insightface's IJB release "
    "(recognition/_evaluation_/ijb) holds the meta files and the loose crops. Pass its IJBC (or IJBB) folder, "
    "the one holding loose_crop/ and meta/."
)


@dataclass(frozen=True)
class IJBFolder:
    """A found IJB folder: `target` is "ijbc" or "ijbb"; the paths exist (not yet read)."""

    root: Path
    target: str

    @property
    def crops(self) -> Path:
        return self.root / "loose_crop"

    def meta(self, kind: str) -> Path:
        """kind: "face_tid_mid", "name_5pts_score" or "template_pair_label"."""
        return self.root / "meta" / f"{self.target}_{kind}.txt"


@dataclass(frozen=True)
class IJBMeta:
    """An IJB folder read and checked. Per face i (rows of the face files): names[i], templates[i],
    medias[i], landmarks[i] (5, 2) float32 in loose-crop pixels, scores[i] (float32, as the reference
    reads them), landmark_text[i] (the row's ten coordinates as written: part of the cache key).
    Per pair: left/right index into `template_ids` (sorted unique templates), genuine (bool)."""

    folder: IJBFolder
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    landmark_text: list[str]
    template_ids: np.ndarray
    left: np.ndarray
    right: np.ndarray
    genuine: np.ndarray

    @property
    def faces(self) -> int:
        return len(self.names)

    @property
    def pairs(self) -> int:
        return int(self.genuine.shape[0])

    def image(self, i: int) -> Path:
        return self.folder.crops / self.names[i]

    def where(self, i: int) -> str:
        """Face i in words, for errors: its image and its row of the landmark file."""
        return f"{self.image(i)} (line {self.line(i)} of {self.folder.meta('name_5pts_score')})"

    def line(self, i: int) -> int:
        return _line_of_row(self.folder.meta("name_5pts_score"), i)


# ----------------------------------------------------------------------------------------------- find


def find_ijb(folder: str | os.PathLike, target: str) -> list[IJBFolder]:
    """[IJBFolder] when `folder` holds loose_crop/ and the three meta files; otherwise a FileFormatError
    naming every path it expected and did not find (cheap: nothing is read)."""
    root = Path(folder)
    upper = target.upper()
    if not root.is_dir():
        raise FileFormatError(f"The {upper} folder {root} does not exist. {WHERE_IJB}")
    if not (root / "loose_crop").exists() and (root / upper / "loose_crop").is_dir():
        raise FileFormatError(f"{root} is the IJB release's top folder; pass {root / upper} (the folder holding loose_crop/ and meta/).")
    found = IJBFolder(root, target)
    expected = [found.crops, found.meta("face_tid_mid"), found.meta("name_5pts_score"), found.meta("template_pair_label")]
    missing = [p for p, ok in zip(expected, [expected[0].is_dir(), *(p.is_file() for p in expected[1:])]) if not ok]
    if missing:
        other = "ijbb" if target == "ijbc" else "ijbc"
        hint = (f" It holds {other}_* meta files: is this the {other.upper()} folder (use --benchmark {other}=...)?"
                if list((root / "meta").glob(f"{other}_*.txt")) else "")
        raise FileFormatError(
            f"{root} is not an {upper} folder of insightface's IJB release: missing {', '.join(str(p) for p in missing)}.{hint} {WHERE_IJB}"
        )
    return [found]


# ----------------------------------------------------------------------------------------------- reading


def _bad(path: Path, line: int, what: str, fix: str = "") -> FileFormatError:
    return FileFormatError(
        f"{path}, line {line}: {what}. {fix or 'The file is damaged or was edited; copy it again from insightface IJB release.'}"
    )


def _rows(path: Path):
    """(line number, fields) of every non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if fields:
                yield number, fields


def _line_of_row(path: Path, row: int) -> int:
    """The file line of non-blank row `row` (0-based); only called to word an error."""
    for k, (number, _) in enumerate(_rows(path)):
        if k == row:
            return number
    return -1


def _read_faces(folder: IJBFolder):
    tid_path, pts_path = folder.meta("face_tid_mid"), folder.meta("name_5pts_score")
    names, ids = [], []
    for number, fields in _rows(tid_path):
        if len(fields) != 3:
            raise _bad(tid_path, number, f"{len(fields)} fields; a row is `name template_id media_id` (3 fields)")
        try:
            ids.append((int(fields[1]), int(fields[2])))
        except ValueError:
            raise _bad(tid_path, number, f"template or media id {fields[1]!r} / {fields[2]!r} is not an integer") from None
        names.append(fields[0])
    if not names:
        raise FileFormatError(f"{tid_path} holds no rows. {WHERE_IJB}")
    landmarks, scores, texts, k = [], [], [], 0
    for number, fields in _rows(pts_path):
        if len(fields) != 12:
            raise _bad(pts_path, number, f"{len(fields)} fields; a row is `name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score` (12 fields)")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            j = next(j for j, v in enumerate(fields[1:]) if not _is_float(v))
            field = "the detector score" if j == 10 else f"landmark coordinate {j + 1}"
            raise _bad(pts_path, number, f"{field} {fields[j + 1]!r} is not a number") from None
        if not np.isfinite(values).all():
            raise _bad(pts_path, number, "a landmark or the score is not finite (nan or inf)")
        if k >= len(names):
            raise _bad(pts_path, number, f"more rows than the {len(names)} of {tid_path}; row i of both files is the same face")
        if fields[0] != names[k]:
            raise _bad(pts_path, number, f"names {fields[0]!r}, but row {k + 1} of {tid_path} names {names[k]!r}; row i of both "
                       "files must be the same face (the reference relies on it)")
        landmarks.append(values[:10])
        scores.append(fields[11])
        texts.append(" ".join(fields[1:11]))
        k += 1
    if k != len(names):
        raise FileFormatError(
            f"{pts_path} holds {k} rows but {tid_path} holds {len(names)}; row i of both files is the same face. "
            "One of them is truncated; copy both again from insightface IJB release."
        )
    ids_arr = np.array(ids, dtype=np.int64)
    lmk = np.array(landmarks, dtype=np.float32).reshape(-1, 5, 2)
    return names, ids_arr[:, 0], ids_arr[:, 1], lmk, np.array(scores).astype(np.float32), texts


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_images(folder: IJBFolder, names: list[str]) -> None:
    """Every named crop exists (one directory listing; names with folders are checked one by one)."""
    listed = {entry.name for entry in os.scandir(folder.crops)}
    for i, name in enumerate(names):
        if not (name in listed if "/" not in name else (folder.crops / name).is_file()):
            path = folder.meta("name_5pts_score")
            raise _bad(path, _line_of_row(path, i), f"the image {folder.crops / name} does not exist",
                       "Copy the loose_crop folder completely (IJB-C holds 469,375 crops, IJB-B 227,630).")


def _read_pairs(folder: IJBFolder, template_ids: np.ndarray):
    """(left, right, genuine): template indices (int32) and labels, parsed in blocks of PAIR_BLOCK rows."""
    path = folder.meta("template_pair_label")
    lefts, rights, labels = [], [], []
    rows = 0
    with open(path, encoding="utf-8", errors="replace") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loadtxt's notes on blank lines and on the end of the file
        while True:
            try:
                block = np.loadtxt(handle, dtype=np.int64, ndmin=2, max_rows=PAIR_BLOCK, comments=None)
            except ValueError:
                _raise_first_bad_pair(path)
                raise  # not reached: the scan finds the row loadtxt refused
            if not block.size:
                break
            if block.shape[1] != 3:
                _raise_first_bad_pair(path)
            pos = np.searchsorted(template_ids, block[:, :2])
            pos = np.minimum(pos, len(template_ids) - 1)
            known = template_ids[pos] == block[:, :2]
            label_ok = (block[:, 2] == 0) | (block[:, 2] == 1)
            if not (known.all() and label_ok.all()):
                k = int(np.argmin(known.all(axis=1) & label_ok))
                line = _line_of_row(path, rows + k)
                if not label_ok[k]:
                    raise _bad(path, line, f"the label is {block[k, 2]}; it must be 1 (genuine) or 0 (impostor)")
                unknown = block[k, 0] if not known[k, 0] else block[k, 1]
                raise _bad(path, line, f"template {unknown} belongs to no face of {folder.meta('face_tid_mid')}",
                           "The pair list and the face list come from different releases (IJB-B vs IJB-C?) or one is truncated; "
                           "copy both again from insightface IJB release.")
            lefts.append(pos[:, 0].astype(np.int32))
            rights.append(pos[:, 1].astype(np.int32))
            labels.append(block[:, 2] == 1)
            rows += len(block)
    if not rows:
        raise FileFormatError(f"{path} holds no pairs. {WHERE_IJB}")
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(labels)


def _raise_first_bad_pair(path: Path) -> None:
    for number, fields in _rows(path):
        if len(fields) != 3:
            raise _bad(path, number, f"{len(fields)} fields; a row is `template1 template2 label` (3 fields)")
        for field in fields:
            try:
                int(field)
            except ValueError:
                raise _bad(path, number, f"{field!r} is not an integer (a row is `template1 template2 label`)") from None
    raise FileFormatError(f"{path} cannot be read as `template1 template2 label` rows. {WHERE_IJB}")


def load_ijb(found: IJBFolder | IJBMeta) -> IJBMeta:
    """Read and check an IJB folder's meta files (and that every crop they name exists)."""
    if isinstance(found, IJBMeta):
        return found
    names, templates, medias, landmarks, scores, texts = _read_faces(found)
    _check_images(found, names)
    template_ids = np.unique(templates)
    left, right, genuine = _read_pairs(found, template_ids)
    return IJBMeta(found, names, templates, medias, landmarks, scores, texts, template_ids, left, right, genuine)


__all__ = ["IJBFolder", "IJBMeta", "RELEASE_FACES", "RELEASE_PAIRS", "find_ijb", "load_ijb"]
