"""Assemble every measure of a run folder into one JSON-ready dict, and write report.json/report.html."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError, InvalidInputError
from synthface.filtering import DROP_REASONS
from synthface.report import metrics as M
from synthface.report.demographics import who_is_in_the_set
from synthface.report.recognisers import recogniser_results
from synthface.report.run import Run, embedding_width, load_run, map_tensor, tensor_names
from synthface.report.sections import FACE_SECTIONS

REPORT_VERSION = 1
HIST_EDGES = np.linspace(-1.0, 1.0, 201)
POSE_EDGES = np.linspace(-90.0, 90.0, 37)
SHARE_WITHIN = (0.5, 0.7)
FARS = (1e-3, 1e-4)
# Upper bounds that keep the report's memory bounded: 12 bytes per genuine pair sampled (1.2 GB),
# 2 bytes per impostor pair, images^2 / 2 pairs (270 MB), and the contact sheet's thumbnails.
MAX_GENUINE_PAIRS = 100_000_000
MAX_IMPOSTOR_IMAGES = 16_384
MAX_SHEET = 64
# A bank without recorded nearest-neighbour cosines is compared exactly up to this many identities.
MAX_VERIFY_IDS = 65_536


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of the report; the defaults keep memory bounded at any dataset size."""

    thresholds: tuple[float, ...] = (0.3, 0.4)
    max_genuine_pairs: int = 2_000_000  # 0: no genuine pairs, so no verification section
    impostor_images: int = 4096
    leak_cos: float = 0.4
    seed: int = 0
    sheet_identities: int = 8
    sheet_images: int = 6
    device: str | None = None

    def __post_init__(self) -> None:
        """Refuse values the measures cannot use (NaN, out of range, too large for bounded memory),
        each named with its `synthface report` option; `device` goes through `resolve_device`."""
        for t in self.thresholds:
            _check_cosine("thresholds", t, -1.0, 1.0, open_range=True)
        _check_cosine("leak_cos (--leak-cos)", self.leak_cos, -1.0, 1.0)
        _check_int("max_genuine_pairs (--max-genuine-pairs; 0 skips the genuine pairs)", self.max_genuine_pairs, 0,
                   MAX_GENUINE_PAIRS)
        _check_int("impostor_images (--impostor-images)", self.impostor_images, 2, MAX_IMPOSTOR_IMAGES)
        _check_int("seed (--seed)", self.seed, 0, 2**63 - 1)
        _check_int("sheet_identities", self.sheet_identities, 0, MAX_SHEET)
        _check_int("sheet_images", self.sheet_images, 0, MAX_SHEET)
        if self.device is not None:
            from synthface.devices import resolve_device

            resolve_device(self.device)


@dataclass
class Report:
    """`data` is what report.json holds; `arrays` keeps the raw scores the plots need."""

    data: dict
    arrays: dict


def compute_report(run: Run, reference: np.ndarray | None = None, options: ReportOptions | None = None) -> Report:
    """All measures of a run: counts, the identity bank, verification, unique identities, spread,
    pose, leakage. A measure that cannot be made is None in `data` and `data["skipped"]` says why:
    every face measure on a run whose images hold no face (`run.no_faces`), verification with
    `max_genuine_pairs=0`, pose when the manifest holds none."""
    opt = options or ReportOptions()
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now

    counts = _counts(run)
    bank, bank_nearest = _bank(run, opt)
    lap("counts_bank")
    if bank is None:
        skipped["identity_bank"] = bank_nearest
        bank_nearest = np.zeros(0, np.float32)
    arrays = {"bank_nearest": bank_nearest}
    verification = unique = spread = leak = cp = impostors = None
    if run.no_faces:
        why = f"{run.no_faces}, and these measures need faces"
        for name in FACE_SECTIONS:
            skipped[name] = why
        if reference is not None:
            skipped["leakage"] = why
    else:
        cp = M.class_pass(run.embeddings, run.identity, run.kept, max_genuine_pairs=opt.max_genuine_pairs, seed=opt.seed)
        lap("class_pass")
        if opt.max_genuine_pairs == 0:
            skipped["verification"] = "genuine pairs skipped (--max-genuine-pairs 0): no EER or TAR"
        else:
            verification, impostors = _verification(run, cp, opt)
            arrays["genuine"], arrays["impostor"] = cp.genuine, impostors.scores
            lap("rates")
        unique = M.unique_identities(cp.centres, opt.thresholds, device=opt.device)
        for curve in unique.values():
            curve["final"] = curve["unique"][-1] if curve["unique"] else 0
        lap("unique_identities")
        per_id_mean = _group_mean(cp.cos_to_centre, np.searchsorted(cp.labels, run.identity[cp.rows]), cp.labels.size)
        spread = {
            "cos_to_centre": M.summary(cp.cos_to_centre),
            "share_within": {f"{t:g}": _share(cp.cos_to_centre >= t) for t in SHARE_WITHIN},
            "identity_mean_cos": M.summary(per_id_mean[np.isfinite(per_id_mean)]),
            "histogram": {"edges": HIST_EDGES.tolist(), "counts": np.histogram(cp.cos_to_centre, HIST_EDGES)[0].tolist()},
        }
        arrays["cos_to_centre"] = cp.cos_to_centre
        if reference is not None:
            leak = M.leakage(cp.centres, reference, cp.labels, threshold=opt.leak_cos)
            arrays["leak_best_cos"] = leak.pop("best_cos")
            lap("leakage")
    pose = _pose(run, skipped)
    lap("pose")
    who = who_is_in_the_set(run, fars=FARS, genuine=cp if impostors is not None else None, impostors=impostors)
    if who is not None:
        lap("who")

    data = {
        "version": REPORT_VERSION,
        "run": run.root.name,
        "counts": counts,
        "identity_bank": bank,
        "verification": verification,
        "unique_identities": unique,
        "intra_class": spread,
        "pose": pose,
        "leakage": leak,
        **({"who": who} if who is not None else {}),  # only a run that measured apparent age and gender
        "skipped": skipped,
        "options": {k: v for k, v in opt.__dict__.items() if k != "device"},
        "seconds": seconds,
    }
    return Report(data=_jsonable(data), arrays=arrays)


def _verification(run: Run, cp: M.ClassPass, opt: ReportOptions) -> tuple[dict, M.ImpostorPairs]:
    """The verification section and the impostor pairs it scored (the who section splits them by group)."""
    impostors = M.impostor_pairs(run.embeddings, run.identity, cp.rows, images=opt.impostor_images, seed=opt.seed)
    impostor, imp_exact = impostors.scores, impostors.exact
    eer, eer_t = M.equal_error_rate(cp.genuine, impostor)
    verification = {
        "genuine_pairs": int(cp.genuine.size),
        "genuine_pairs_total": cp.genuine_pairs_total,
        "genuine_exact": cp.genuine_exact,
        "impostor_pairs": int(impostor.size),
        "impostor_exact": imp_exact,
        "genuine_mean": _mean(cp.genuine),
        "impostor_mean": _mean(impostor),
        "eer": eer,
        "eer_threshold": eer_t,
        "tar_at_far": {f"{far:g}": M.tar_at_far(cp.genuine, impostor, far) for far in FARS},
        "histogram": {
            "edges": HIST_EDGES.tolist(),
            "genuine": np.histogram(cp.genuine, HIST_EDGES)[0].tolist(),
            "impostor": np.histogram(impostor, HIST_EDGES)[0].tolist(),
        },
    }
    return verification, impostors


def _pose(run: Run, skipped: dict[str, str]) -> dict | None:
    """Summaries of the manifest's yaw, pitch and roll over kept images; None (and why, in `skipped`)
    when the manifest has the columns but no value in them (the filter estimated no pose)."""
    cols, kept = run.columns, run.kept
    angles = [k for k in ("yaw", "pitch", "roll") if k in cols]
    pose = {}
    for k in angles:
        v = np.asarray(cols[k], dtype=np.float64)[kept]
        v = v[np.isfinite(v)]
        if v.size:
            pose[k] = {**M.summary(v), "histogram": {"edges": POSE_EDGES.tolist(), "counts": np.histogram(np.clip(v, -90, 90), POSE_EDGES)[0].tolist()}}
    if angles and not pose and kept.any():
        skipped["pose"] = "the manifest holds no pose for the kept images (no face analyser estimated one)"
    return pose or None


def _bank(run: Run, opt: ReportOptions) -> tuple[dict | None, np.ndarray | str]:
    """The identity bank's separation: each identity's cosine to its nearest neighbour in the bank,
    as recorded in the identities file (computed exactly for a bank that lacks the record, up to
    MAX_VERIFY_IDS identities). Returns (section, the nearest cosines), or (None, why not)."""
    path = run.ids_path
    n, dim = run.ids.shape
    source = "recorded"
    if path is not None and "nearest_cos" in tensor_names(path):
        nearest = np.asarray(map_tensor(path, "nearest_cos"), dtype=np.float32)
        if nearest.shape != (n,):
            raise FileFormatError(
                f"{path}: nearest_cos has shape {nearest.shape} for {n} identities; the file is damaged. Check it "
                "with `synthface ids verify`, or rerun the recipe into this folder."
            )
    elif n > MAX_VERIFY_IDS:
        return None, (f"the bank's {n} identities carry no recorded nearest-neighbour cosines and are more than "
                      f"{MAX_VERIFY_IDS} to compare here; measure them with `synthface ids verify {path}`")
    else:
        from synthface.identity import verify_vectors

        nearest = verify_vectors(np.array(run.ids, dtype=np.float32), bins=0, device=opt.device).nearest_cos
        source = "computed"
    finite = nearest[np.isfinite(nearest)]
    section = {
        "count": int(n),
        "dim": int(dim),
        "max_cos": float(finite.max()) if finite.size else math.nan,
        "nearest_cos": M.summary(finite),
        "histogram": {"edges": HIST_EDGES.tolist(), "counts": np.histogram(finite, HIST_EDGES)[0].tolist()},
        "source": source,
    }
    return section, finite


def _counts(run: Run) -> dict:
    reasons = run.columns["drop_reason"]
    dropped = reasons[~run.kept]
    names, numbers = np.unique(dropped.astype(str), return_counts=True) if dropped.size else ([], [])
    by_reason = {name: 0 for name in DROP_REASONS}
    by_reason.update({str(k): int(v) for k, v in zip(names, numbers)})
    labels, inverse = np.unique(run.identity, return_inverse=True)
    per_identity = np.bincount(inverse[run.kept], minlength=labels.size)
    return {
        "candidates": len(run),
        "kept": int(run.kept.sum()),
        "dropped": int((~run.kept).sum()),
        "drop_reasons": by_reason,
        "identities_in_bank": int(run.ids.shape[0]),
        "identities_generated": int(labels.size),
        "identities_with_images": int(np.count_nonzero(per_identity)),
        "images_per_identity": M.summary(per_identity),
    }


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    options: ReportOptions | None = None,
    html: bool = True,
    analyzer=None,
) -> tuple[Path, Path | None, Report]:
    """Compute the report of run folder `root`; write report.json (and report.html) into `out` (default: root).

    `analyzer` embeds the kept images of a run that has no embeddings (filtering off); the report
    then says which analyser did (`embedded_by`)."""
    from synthface.io import atomic_write_bytes, check_output_folder, check_output_path, output_errors

    out_dir = Path(out) if out is not None else Path(root)
    if out_dir.exists() or out_dir.is_symlink():  # both outputs are checked before the work
        check_output_path(out_dir / "report.json")
        if html:
            check_output_path(out_dir / "report.html")
    else:  # a new folder: created once the report is computed, nothing before
        check_output_folder(out_dir, what="report folder")
    ref = None
    if reference is not None:
        ref = _reference(reference, root, analyzer)
    run = load_run(root, analyzer)
    report = compute_report(run, ref, options)
    report.data["embedded_by"] = run.embedded_by or None
    trained = recogniser_results(root)
    if trained:
        report.data["recognisers"] = trained
    with output_errors(out_dir, action="create the report folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_bytes(out_dir / "report.json", (json.dumps(report.data, indent=1) + "\n").encode())
    html_path = None
    if html:
        from synthface.report.render import render_html

        opt = options or ReportOptions()
        page = render_html(report, run, sheet_identities=opt.sheet_identities, sheet_images=opt.sheet_images)
        html_path = atomic_write_bytes(out_dir / "report.html", page.encode())
    return json_path, html_path, report


def _reference(path: str | Path, root: str | Path, analyzer) -> np.ndarray:
    """The reference centres for the leakage check, refused (InvalidInputError) when their width is
    not that of the embeddings the report measures: read before the run is opened or embedded."""
    from synthface.identity import load_vectors

    width, what = embedding_width(root, analyzer)
    ref = load_vectors(path)
    if width and ref.shape[1] != width:
        raise InvalidInputError(
            f"The reference {path} holds vectors of dimension {ref.shape[1]}, but this run is measured in "
            f"dimension {width} ({what}). Leakage compares like with like: embed the real identities with the "
            "same face analyser (synthface embed --backend NAME ... --mean) and pass those centres as --reference."
        )
    return ref


def _check_cosine(name: str, value, lo: float, hi: float, *, open_range: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value < hi if open_range else lo <= value <= hi):
        between = f"strictly between {lo:g} and {hi:g}" if open_range else f"from {lo:g} to {hi:g}"
        raise InvalidInputError(f"{name} must be a cosine {between}, got {value!r}.")


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise InvalidInputError(
            f"{name} must be an integer from {lo} to {hi} (the upper bound keeps the report's memory bounded), "
            f"got {value!r}."
        )


def _group_mean(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    sums = np.bincount(groups, weights=values, minlength=n)
    counts = np.bincount(groups, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else math.nan


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x, dtype=np.float64)) if x.size else math.nan


def _jsonable(value):
    """NaN/inf become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
