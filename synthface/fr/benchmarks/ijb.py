"""IJB-B / IJB-C 1:1 template verification, arcface_torch eval_ijbc.py's default mode ("N1 D1 F2") exactly.

    bench = get_benchmark("ijbc")                  # or "ijbb"
    section = bench.evaluate(recognizer, bench.find("IJB_release/IJBC"), cache=cache, progress=bar.update)
    section["tar_at_far"]["0.0001"]                # TAR at FAR 1e-4, a fraction

The procedure, step by step (FR-EVAL.md section 1; the folder and its meta files: ijb_meta.py):
1. each loose crop is read (BGR, as cv2 reads it), aligned by a least-squares similarity from its five
   landmarks to the ArcFace template at the recogniser's input size (bilinear, black border), then RGB;
2. raw embedding f(x) + f(mirror x) (F2), norms kept (N1), times the face's detector score (D1);
3. within each template, faces grouped by media id: a media's faces are averaged, the template is the
   sum of its media (no normalisation of media), then L2-normalised (a zero template stays zero);
4. the score of a pair is the dot product of its two templates (cosine), float64;
5. the ROC is sklearn's roc_curve with its defaults (drop_intermediate: collinear points dropped, a
   (0, 0) point first), re-derived here in numpy; for each FAR in 1e-6 .. 1e-1 the TPR of the ROC point
   whose FPR is nearest to it, ties to the point of highest FPR/TPR (the reference searches the reversed
   arrays and keeps the first): no interpolation. AUC by the trapezoid rule over the same points.
With N impostor pairs, a FAR below 1 / (2N) reads the TPR at FPR 0 (`fpr_at_far` says which point each
FAR read). Templates are pooled and pairs scored in blocks, so memory beyond the face embeddings and
the pair list stays bounded (a few tens of MB) whatever the number of pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.benchmarks.embeddings import EmbeddingCache, embed
from synthface.fr.benchmarks.ijb_meta import RELEASE_PAIRS, IJBFolder, IJBMeta, find_ijb, load_ijb
from synthface.fr.benchmarks.recognizers import Recognizer
from synthface.fr.benchmarks.registry import Benchmark

#: The FARs of the reference's table, and their keys in results.json (str of the float).
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FAR_KEYS = tuple(str(far) for far in FARS)  # "1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"
#: The ArcFace template as eval_ijbc.py builds it: the 96 x 112 points in float32, x + 8.
REFERENCE_TEMPLATE = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                               [62.7299, 92.2041]], dtype=np.float32) + np.array([8.0, 0.0], dtype=np.float32)
#: Float64 values gathered per block when pooling templates and scoring pairs (64 MB a block).
BLOCK_VALUES = 1 << 23


# ----------------------------------------------------------------------------------------------- faces


def face_keys(meta: IJBMeta) -> list[str]:
    """Cache keys: the crop's name, size and mtime, and the landmarks its crop is aligned by."""
    keys = []
    for i, name in enumerate(meta.names):
        st = os.stat(meta.image(i))
        keys.append(f"{name}|{st.st_size}|{st.st_mtime_ns}|{meta.landmark_text[i]}")
    return keys


def align_face(meta: IJBMeta, i: int, size: int) -> np.ndarray:
    """Face i aligned: (size, size, 3) uint8 RGB (step 1). synthface.faces.norm_crop's fit and warp, onto the
    template as eval_ijbc.py writes it (float32 96 x 112 points, x + 8: it differs from the rounded 112 x 112
    constants by a float32 ulp, enough to move a few border pixels of the warp)."""
    import cv2

    from synthface.faces.align import estimate_similarity

    bgr = cv2.imread(str(meta.image(i)), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileFormatError(f"{meta.where(i)} cannot be read as an image (truncated or not a JPEG/PNG). Copy it again from the release.")
    matrix = estimate_similarity(meta.landmarks[i], REFERENCE_TEMPLATE * (size / 112.0))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def embed_faces(recognizer: Recognizer, meta: IJBMeta, *, flip: bool = True, cache: EmbeddingCache | None = None,
                progress: Callable[[int], None] | None = None, workers: int | None = None) -> np.ndarray:
    """(faces, D) float32 raw embeddings, f(x) + f(mirror x) with `flip`; crops decoded on a thread pool."""
    size = recognizer.input_size
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:

        def load_crops(index: np.ndarray) -> np.ndarray:
            return np.stack(list(pool.map(lambda i: align_face(meta, int(i), size), index)))

        return embed(recognizer, load_crops, face_keys(meta), flip=flip, cache=cache, progress=progress, what="face")


# ----------------------------------------------------------------------------------------------- templates and pairs


def template_features(raw: np.ndarray, meta: IJBMeta, *, detector_score: bool = True, keep_norms: bool = True) -> np.ndarray:
    """(templates, D) float64 unit templates in the order of meta.template_ids (steps 2-3), pooled in
    blocks of whole templates (memory: one block of face features, BLOCK_VALUES float64)."""
    raw = np.asarray(raw)
    n, dim = raw.shape
    tindex = np.searchsorted(meta.template_ids, meta.templates)
    order = np.lexsort((meta.medias, tindex))  # by template, then media
    ts, ms = tindex[order], meta.medias[order]
    new_template = np.r_[True, ts[1:] != ts[:-1]]
    new_group = new_template | np.r_[True, ms[1:] != ms[:-1]]
    template_starts = np.r_[np.flatnonzero(new_template), n]
    out = np.zeros((len(meta.template_ids), dim), np.float64)
    per_block = max(1, BLOCK_VALUES // max(dim, 1))
    a = 0
    while a < n:
        b = int(template_starts[min(np.searchsorted(template_starts, a + per_block), len(template_starts) - 1)])
        rows = order[a:b]
        x = raw[rows].astype(np.float64)
        if not keep_norms:  # "N0": each face L2-normalised first
            x /= np.sqrt(np.sum(x**2, axis=1, keepdims=True))
        if detector_score:  # "D1"
            x *= meta.scores[rows].astype(np.float64)[:, None]
        starts = np.flatnonzero(new_group[a:b])
        counts = np.diff(np.r_[starts, b - a])
        media = np.add.reduceat(x, starts, axis=0) / counts[:, None]  # a media's mean (a single face: itself)
        group_template = ts[a:b][starts]
        first = np.r_[True, group_template[1:] != group_template[:-1]]
        out[group_template[first]] = np.add.reduceat(media, np.flatnonzero(first), axis=0)
        a = b
    norms = np.sqrt(np.sum(out**2, axis=1, keepdims=True))
    norms[norms == 0] = 1.0  # sklearn.preprocessing.normalize leaves a zero vector zero
    return out / norms


def pair_scores(templates: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine of each pair (step 4), float64, in blocks (memory: 2 x BLOCK_VALUES float64 gathered)."""
    scores = np.empty(len(left), np.float64)
    step = max(1, BLOCK_VALUES // max(templates.shape[1], 1))
    for s in range(0, len(left), step):
        scores[s : s + step] = np.einsum("ij,ij->i", templates[left[s : s + step]], templates[right[s : s + step]])
    return scores


# ----------------------------------------------------------------------------------------------- ROC


def roc_curve(genuine: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) as sklearn.metrics.roc_curve(genuine, scores) returns them with its defaults: one point
    per distinct score (descending), collinear interior points dropped, then (0, 0) prepended."""
    genuine = np.asarray(genuine, dtype=bool)
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last index of each run of equal scores
    del s
    tps = np.cumsum(genuine[order], dtype=np.int64)[last]
    del order
    fps = 1 + last - tps
    if len(fps) > 2:  # drop_intermediate
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1]


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = FARS) -> tuple[list[float], list[float]]:
    """(TPRs, the FPRs of the points they read): per FAR the point of nearest FPR, searched in the reversed
    arrays with the first minimum kept (the reference's `min(zip(abs(fpr - far), range(n)))`)."""
    rfpr, rtpr = fpr[::-1], tpr[::-1]
    picks = [int(np.argmin(np.abs(rfpr - far))) for far in fars]
    return [float(rtpr[k]) for k in picks], [float(rfpr[k]) for k in picks]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """sklearn.metrics.auc: the trapezoid rule (fpr is non-decreasing here)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


# ----------------------------------------------------------------------------------------------- the protocol


def mode_name(*, flip: bool, detector_score: bool, keep_norms: bool) -> str:
    """The source's name for a mode: N (norms kept), D (detector score), F2 (flip sum) / F0 (no flip)."""
    return f"N{int(keep_norms)}D{int(detector_score)}F{2 if flip else 0}"


def evaluate(recognizer: Recognizer, items, *, flip: bool = True, cache: EmbeddingCache | None = None,
             progress: Callable[[int], None] | None = None, detector_score: bool = True, keep_norms: bool = True) -> dict:
    """The results.json section of one IJB folder (`items`: find's list of one, or the folder or meta itself):
    tar_at_far (the six string keys, fractions), auc, pairs, genuine, impostor, and how it was computed.
    The defaults are eval_ijbc.py's default mode; detector_score=False gives AdaFace's N1D0F2,
    keep_norms=False CVLface's N0D1 (named in "mode")."""
    if isinstance(items, (list, tuple)):
        if len(items) != 1:
            raise InvalidInputError(f"An IJB benchmark evaluates one folder at a time; got {len(items)}.")
        items = items[0]
    if not isinstance(items, (IJBFolder, IJBMeta)):
        raise InvalidInputError(f"evaluate takes what find_ijb or load_ijb returns, not a {type(items).__name__}.")
    meta = load_ijb(items)
    raw = embed_faces(recognizer, meta, flip=flip, cache=cache, progress=progress)
    templates = template_features(raw, meta, detector_score=detector_score, keep_norms=keep_norms)
    del raw
    scores = pair_scores(templates, meta.left, meta.right)
    genuine = int(meta.genuine.sum())
    if genuine in (0, meta.pairs):
        kind = "genuine (label 1)" if genuine == 0 else "impostor (label 0)"
        raise FileFormatError(f"{meta.folder.meta('template_pair_label')} holds no {kind} pair; a ROC needs both kinds.")
    fpr, tpr = roc_curve(meta.genuine, scores)
    tars, read_fprs = tar_at_far(fpr, tpr)
    target = meta.folder.target
    return {
        "tar_at_far": dict(zip(FAR_KEYS, tars)),
        "auc": auc(fpr, tpr),
        "pairs": meta.pairs,
        "genuine": genuine,
        "impostor": meta.pairs - genuine,
        "templates": int(len(meta.template_ids)),
        "faces": meta.faces,
        "fpr_at_far": dict(zip(FAR_KEYS, read_fprs)),
        "full_release": meta.pairs == RELEASE_PAIRS[target],
        "mode": mode_name(flip=flip, detector_score=detector_score, keep_norms=keep_norms),
        "protocol": "arcface_torch eval_ijbc.py: 5-point alignment, flip sum, norms kept, times detector score, "
                    "media then template pooling, cosine, sklearn ROC, TPR of the nearest-FPR point (no interpolation)",
        "model": recognizer.description,
        "folder": str(meta.folder.root),
    }


def rows(section: dict) -> list[tuple[str, str]]:
    """(label, value) rows for a results table: TAR at each FAR in percent (2 decimals, as the reference
    prints them), AUC, the pair counts."""
    out = [(f"TAR@FAR={far:.0e} %", f"{100 * section['tar_at_far'][key]:.2f}") for far, key in zip(FARS, FAR_KEYS)]
    out.append(("AUC", f"{section['auc']:.6f}"))
    out.append(("pairs", f"{section['pairs']:,} ({section['genuine']:,} genuine)"))
    return out


def find_ijbc(folder) -> list[IJBFolder]:
    """The IJBC folder of insightface's IJB release (loose_crop/, meta/ijbc_*.txt)."""
    return find_ijb(folder, "ijbc")


def find_ijbb(folder) -> list[IJBFolder]:
    """The IJBB folder of insightface's IJB release (loose_crop/, meta/ijbb_*.txt)."""
    return find_ijb(folder, "ijbb")


def _benchmark(name: str, find) -> Benchmark:
    spec = dict(
        name=name, description=f"{name.upper()} 1:1 template verification (arcface_torch eval_ijbc.py, N1D1F2)",
        find=find, load=load_ijb, evaluate=evaluate, headline="tar_at_far/0.0001",
        # fields are "/"-separated paths into the section
        columns=(("TAR@FAR=1e-5 %", "tar_at_far/1e-05", 100), ("TAR@FAR=1e-4 %", "tar_at_far/0.0001", 100),
                 ("AUC", "auc", None), ("pairs", "pairs", None)),
    )
    if "rows" in {f.name for f in fields(Benchmark)}:  # once the registry's Benchmark takes a rows function
        spec["rows"] = rows
    return Benchmark(**spec)


IJBC = _benchmark("ijbc", find_ijbc)
IJBB = _benchmark("ijbb", find_ijbb)
#: The module's protocols, for the registry (synthface.fr.benchmarks registers both).
BENCHMARKS = (IJBC, IJBB)
BENCHMARK = IJBC

__all__ = ["BENCHMARK", "BENCHMARKS", "FARS", "FAR_KEYS", "IJBB", "IJBC", "auc", "evaluate", "pair_scores", "roc_curve",
           "rows", "tar_at_far", "template_features"]
