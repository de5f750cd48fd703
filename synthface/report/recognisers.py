"""Verification results of recognisers trained on a run's data, for the dataset report.

`synthface train RUN --out RUN/fr/NAME --eval-bins DIR` leaves `RUN/fr/NAME/results.json`; the
report lists each such file's per-set accuracy and average, so a set and how well it trains sit
side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

FR_DIR = "fr"


def recogniser_results(root: str | Path) -> dict[str, dict]:
    """{NAME: {"average": float, "sets": {set: accuracy}}} for every readable `root/fr/NAME/results.json`,
    in name order; files that are not `synthface eval` results are left out."""
    found = {}
    for path in sorted(Path(root).glob(f"{FR_DIR}/*/results.json")):
        try:
            data = json.loads(path.read_text())
            found[path.parent.name] = {
                "average": float(data["average"]),
                "sets": {name: float(r["accuracy"]) for name, r in data["sets"].items()},
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return found
