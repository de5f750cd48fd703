"""Assemble every measure of a run folder into one JSON-ready dict, and write report.json/report.html."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import InvalidInputError
from synthface.filtering import DROP_REASONS
from synthface.report import metrics as M
from synthface.report.recognisers import recogniser_results
from synthface.report.run import Run, load_run

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


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of the report; the defaults keep memory bounded at any dataset size."""

    thresholds: tuple[float, ...] = (0.3, 0.4)
    max_genuine_pairs: int = 2_000_000
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
        _check_int("max_genuine_pairs (--max-genuine-pairs)", self.max_genuine_pairs, 1, MAX_GENUINE_PAIRS)
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
    """All measures of a run: counts, verification, unique identities, spread, pose, leakage."""
    opt = options or ReportOptions()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now

    cols, kept = run.columns, run.kept
    cp = M.class_pass(run.embeddings, run.identity, kept, max_genuine_pairs=opt.max_genuine_pairs, seed=opt.seed)
    lap("class_pass")
    impostor, imp_exact = M.impostor_scores(run.embeddings, run.identity, cp.rows, images=opt.impostor_images, seed=opt.seed)
    lap("impostors")
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
    pose = None
    if any(k in cols for k in ("yaw", "pitch", "roll")):
        pose = {}
        for k in ("yaw", "pitch", "roll"):
            if k in cols:
                v = np.asarray(cols[k], dtype=np.float64)[kept]
                v = v[np.isfinite(v)]
                pose[k] = {**M.summary(v), "histogram": {"edges": POSE_EDGES.tolist(), "counts": np.histogram(np.clip(v, -90, 90), POSE_EDGES)[0].tolist()}}
    lap("spread_pose")

    leak = None
    arrays = {"genuine": cp.genuine, "impostor": impostor, "cos_to_centre": cp.cos_to_centre}
    if reference is not None:
        leak = M.leakage(cp.centres, reference, cp.labels, threshold=opt.leak_cos)
        arrays["leak_best_cos"] = leak.pop("best_cos")
        lap("leakage")

    data = {
        "version": REPORT_VERSION,
        "run": run.root.name,
        "counts": _counts(run, cp),
        "verification": verification,
        "unique_identities": unique,
        "intra_class": spread,
        "pose": pose,
        "leakage": leak,
        "options": {k: v for k, v in opt.__dict__.items() if k != "device"},
        "seconds": seconds,
    }
    return Report(data=_jsonable(data), arrays=arrays)


def _counts(run: Run, cp: M.ClassPass) -> dict:
    reasons = run.columns["drop_reason"]
    dropped = reasons[~run.kept]
    names, numbers = np.unique(dropped.astype(str), return_counts=True) if dropped.size else ([], [])
    by_reason = {name: 0 for name in DROP_REASONS}
    by_reason.update({str(k): int(v) for k, v in zip(names, numbers)})
    return {
        "candidates": len(run),
        "kept": int(run.kept.sum()),
        "dropped": int((~run.kept).sum()),
        "drop_reasons": by_reason,
        "identities_in_bank": None if run.ids is None else int(run.ids.shape[0]),
        "identities_generated": int(cp.labels.size),
        "identities_with_images": int(np.count_nonzero(cp.counts)),
        "images_per_identity": M.summary(cp.counts),
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
    from synthface.io import atomic_write_bytes, check_output_path

    out_dir = Path(out) if out is not None else Path(root)
    check_output_path(out_dir / "report.json")  # both outputs are checked before the work
    if html:
        check_output_path(out_dir / "report.html")
    run = load_run(root, analyzer)
    ref = None
    if reference is not None:
        from synthface.identity import load_vectors

        ref = load_vectors(reference, dim=run.embeddings.shape[1])
    report = compute_report(run, ref, options)
    report.data["embedded_by"] = run.embedded_by or None
    trained = recogniser_results(root)
    if trained:
        report.data["recognisers"] = trained
    json_path = atomic_write_bytes(out_dir / "report.json", (json.dumps(report.data, indent=1) + "\n").encode())
    html_path = None
    if html:
        from synthface.report.render import render_html

        opt = options or ReportOptions()
        page = render_html(report, run, sheet_identities=opt.sheet_identities, sheet_images=opt.sheet_images)
        html_path = atomic_write_bytes(out_dir / "report.html", page.encode())
    return json_path, html_path, report


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
