"""Results of recognisers trained on a run's data, for the dataset report.

`synthface train RUN --out RUN/fr/NAME --eval-bins DIR` leaves `RUN/fr/NAME/results.json`, and
`synthface eval RUN/fr/NAME --bins DIR --benchmark ijbc=PATH ... --out RUN/fr/NAME/results.json` adds
one section per benchmark; the report lists each file's five-set (.bin) accuracy and average and,
beside them, every benchmark section's headline numbers, so a set and how well it trains sit side by side.

Reading is lenient, so files written by other tools count too: a section is looked up as
results[NAME] or anywhere below it (e.g. results["benchmarks"]["ijbc"]); rates may be fractions or
percent (a section, or the five-set block, with any value above 1 is read as percent); TAR keys are
matched by their value ("1e-04", "0.0001" and "1e-4" are one FAR). Numbers are stored as fractions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

FR_DIR = "fr"

_TAR = (("TAR@FAR=1e-4", ("tar_at_far", 1e-4)), ("TAR@FAR=1e-5", ("tar_at_far", 1e-5)))
#: What the report shows of each known benchmark section: (label, (field, FAR or None)), all rates.
SECTION_FIELDS: dict[str, tuple[tuple[str, tuple[str, float | None]], ...]] = {
    "ijbb": _TAR,
    "ijbc": _TAR,
    "tinyface": (("rank-1", ("rank-1", None)), ("rank-5", ("rank-5", None)), ("rank-20", ("rank-20", None))),
    "rfw": (("mean", ("mean", None)), ("std", ("std", None)), ("tradeoff", ("tradeoff", None))),
}
#: Top-level keys of `synthface eval`'s results.json that are not benchmark sections.
NOT_SECTIONS = ("model", "flip", "protocol", "sets", "average", "folders", "benchmarks", "bin")
_MAX_DEPTH = 4


def recogniser_results(root: str | Path) -> dict[str, dict]:
    """{NAME: {"average": float | None, "sets": {set: accuracy}[, "benchmarks": {bench: {label: rate}}]}} for
    every readable `root/fr/NAME/results.json` holding .bin results or a benchmark section, in name order;
    files that are not `synthface eval` results are left out."""
    found = {}
    for path in sorted(Path(root).glob(f"{FR_DIR}/*/results.json")):
        try:
            entry = read_results(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if entry is not None:
            found[path.parent.name] = entry
    return found


def read_results(data: dict) -> dict | None:
    """One results.json's entry for the report (see `recogniser_results`), None when it holds nothing to show."""
    if not isinstance(data, dict):
        return None
    five = data if "average" in data and "sets" in data else data.get("bin") if isinstance(data.get("bin"), dict) else None
    entry: dict = {"average": None, "sets": {}}
    if five is not None and "average" in five:
        sets = {name: float(r["accuracy"]) for name, r in five["sets"].items()}
        average = float(five["average"])
        scale = 100.0 if max([average, *sets.values()]) > 1 else 1.0
        entry = {"average": average / scale, "sets": {k: v / scale for k, v in sets.items()}}
    benches = {}
    names = list(SECTION_FIELDS) + [k for k, v in data.items() if isinstance(v, dict) and k not in NOT_SECTIONS
                                    and k not in SECTION_FIELDS]
    for name in names:
        section = find_section(data, name)
        if section is not None:
            shown = section_numbers(name, section)
            if shown:
                benches[name] = shown
    if benches:
        entry["benchmarks"] = benches
    return entry if entry["average"] is not None or benches else None


def find_section(data: dict, name: str, depth: int = 0) -> dict | None:
    """results[name] when it is a dict, else the first dict under that key anywhere below (breadth first)."""
    if isinstance(data.get(name), dict):
        return data[name]
    if depth >= _MAX_DEPTH:
        return None
    for value in data.values():
        if isinstance(value, dict):
            hit = find_section(value, name, depth + 1)
            if hit is not None:
                return hit
    return None


def section_numbers(name: str, section: dict) -> dict[str, float]:
    """{label: rate as a fraction} of one section: the fields SECTION_FIELDS names for a known protocol, every
    top-level float of another; percent when any value shown is above 1."""
    out = {}
    if name in SECTION_FIELDS:
        for label, (key, far) in SECTION_FIELDS[name]:
            value = section.get(key)
            if far is not None:
                value = _at_far(value, far)
            if _number(value):
                out[label] = float(value)
    else:
        out = {k: float(v) for k, v in section.items() if _number(v) and isinstance(v, float)}
    if out and max(out.values()) > 1:
        out = {k: v / 100 for k, v in out.items()}
    return out


def _at_far(table, far: float):
    if not isinstance(table, dict):
        return None
    for key, value in table.items():
        try:
            if math.isclose(float(key), far, rel_tol=1e-9):
                return value
        except (TypeError, ValueError):
            continue
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
