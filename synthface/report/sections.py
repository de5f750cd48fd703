"""The report's sections by name, and what the console and the page say about the ones skipped."""

from __future__ import annotations

#: The sections that measure faces (skipped, with the reason, on a run whose images hold none).
FACE_SECTIONS = ("verification", "unique_identities", "intra_class")
#: Each section's name in words, for what the console and the page say about skipped ones.
SECTION_NAMES = {
    "identity_bank": "identity bank separation",
    "verification": "verification (EER, TAR)",
    "unique_identities": "unique identities",
    "intra_class": "intra-class spread",
    "pose": "pose",
    "leakage": "leakage",
    "who": "who is in the set (apparent age and gender)",
}


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    """One sentence per distinct reason in a report's `skipped`, naming the sections it skipped."""
    by_reason: dict[str, list[str]] = {}
    for section, why in skipped.items():
        by_reason.setdefault(why, []).append(SECTION_NAMES.get(section, section))
    return [f"skipped {', '.join(names)}: {why}." for why, names in by_reason.items()]
