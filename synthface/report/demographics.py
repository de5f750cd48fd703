"""The report's "who is in the set" section: apparent age and gender over kept images and identities,
each identity's consistency, and verification (EER, TAR) per attribute group, from a manifest that holds
the attribute columns (filtering.attributes). The summaries are `synthface.filtering.attributes`'."""

from __future__ import annotations

import math

import numpy as np

from synthface.filtering.attributes import GENDERS, REPORT_AGE_BINS, attribute_columns, group_of, identity_attributes
from synthface.report import metrics as M

AGE_EDGES = np.arange(0.0, 101.0, 5.0)
#: The least consistent identities the section lists (lowest gender agreement, then widest age spread).
LEAST_CONSISTENT = 20


def who_is_in_the_set(run, *, fars, genuine: M.ClassPass | None = None, impostors: M.ImpostorPairs | None = None
                      ) -> dict | None:
    """The section, or None when the manifest holds no attributes. Verification per group splits the
    report's own genuine scores (`genuine`: its class pass) and impostor pairs (`impostors`) by the group
    of their identities (an impostor pair counts for a group when both identities are in it); it is None
    when the report scored no pairs (no faces, or --max-genuine-pairs 0)."""
    cols = run.columns
    if not attribute_columns(cols):
        return None
    kept = run.kept
    age = np.asarray(cols["age"], dtype=np.float64)
    gender = np.asarray(cols["gender"], dtype=object)
    summary = identity_attributes(run.identity, age, gender, cols["gender_confidence"], kept)
    have = summary.images > 0
    image_ages = age[kept & np.isfinite(age)]
    identity_ages = summary.median_age[have]
    groups = {"gender": group_of(summary, "gender", GENDERS), "age": group_of(summary, "age", REPORT_AGE_BINS)}
    order = np.lexsort((-np.nan_to_num(summary.age_spread[have]), summary.agreement[have]))
    section = {
        "images": {
            "gender": {g: int(np.count_nonzero(kept & (gender == g))) for g in GENDERS},
            "age": M.summary(image_ages),
            "age_histogram": {"edges": AGE_EDGES.tolist(), "counts": _hist(image_ages)},
        },
        "identities": {
            "gender": {g: int(np.count_nonzero(have & (groups["gender"] == g))) for g in GENDERS},
            "age_groups": {name: int(np.count_nonzero(have & (groups["age"] == name))) for name in REPORT_AGE_BINS},
            "median_age": M.summary(identity_ages),
            "age_histogram": {"edges": AGE_EDGES.tolist(), "counts": _hist(identity_ages)},
        },
        "consistency": {
            "gender_agreement": M.summary(summary.agreement[have]),
            "age_spread": M.summary(summary.age_spread[have]),
            "least_consistent": [summary.to_rows()[k] for k in np.flatnonzero(have)[order[:LEAST_CONSISTENT]]],
        },
        "verification_by_group": None,
    }
    if genuine is not None and impostors is not None:
        section["verification_by_group"] = {
            marginal: {name: _group_rates(run, summary.labels[have & (group == name)], genuine, impostors, fars)
                       for name in names}
            for (marginal, group), names in zip(groups.items(), (GENDERS, list(REPORT_AGE_BINS)))
        }
    return section


def _group_rates(run, members: np.ndarray, genuine: M.ClassPass, impostors: M.ImpostorPairs, fars) -> dict:
    """EER and TAR @ FAR over the report's pairs whose identities are all in `members` (labels)."""
    in_group = np.isin(genuine.labels, members)
    gen = genuine.genuine[in_group[genuine.genuine_class]]
    row_in = np.isin(run.identity[impostors.rows], members)
    imp = impostors.scores[row_in[impostors.a] & row_in[impostors.b]]
    identities = int(np.count_nonzero(np.isin(members, run.identity[run.kept])))
    if gen.size == 0 or imp.size == 0:
        return {"identities": identities, "genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size),
                "eer": math.nan, "tar_at_far": {f"{far:g}": math.nan for far in fars}}
    eer, _ = M.equal_error_rate(gen, imp)
    return {"identities": identities, "genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size),
            "eer": eer, "tar_at_far": {f"{far:g}": M.tar_at_far(gen, imp, far)["tar"] for far in fars}}


def _hist(values: np.ndarray) -> list[int]:
    return np.histogram(np.clip(values, AGE_EDGES[0], AGE_EDGES[-1]), AGE_EDGES)[0].tolist()
