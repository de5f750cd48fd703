"""Who an identity is, by its images' apparent ages and genders: the one home of the demographic
summaries that filtering, the engine, the report and the card read.

An identity's gender is the majority of its images' genders (a tie goes to the gender with the larger
summed confidence, then to GENDERS' first), its age the median of their ages; its age spread is the
interquartile range (p75 - p25) and its gender agreement the share of its images of the majority gender.
An image drifts when its gender disagrees with its identity's, or its age is more than `max_age_gap`
years from the identity's median (`attribute_drift`); an identity is inconsistent when more than a share
of its judged images drifted (`inconsistent_identities`). `balance_report` compares the kept
identities with an `identities.balance` target and names what to resample (`balance_surplus`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from synthface.faces.attributes import FIELDS, GENDERS
from synthface.filtering._arrays import _as_labels

#: Reasons of images the attribute rules never judged: no face, or dropped before them, or of a replaced vector.
UNJUDGED = ("no_face", "low_similarity", "low_quality", "replaced")
DRIFT = "attribute_drift"
#: The age groups the report breaks verification down by when the recipe sets no age balance.
REPORT_AGE_BINS = {"0-30": (0.0, 30.0), "30-45": (30.0, 45.0), "45-60": (45.0, 60.0), "60-150": (60.0, 150.0)}


@dataclass
class IdentityAttributes:
    """Per identity (`labels`, ascending): images summarised, median age, age spread (IQR), majority
    gender ("" when no image), and the share of its images of that gender (NaN when none)."""

    labels: np.ndarray
    images: np.ndarray
    median_age: np.ndarray
    age_spread: np.ndarray
    gender: np.ndarray
    agreement: np.ndarray

    def of(self, identity) -> np.ndarray:
        """Row of each of `identity`'s labels in these arrays."""
        return np.searchsorted(self.labels, np.asarray(identity, dtype=np.int64))

    def to_rows(self) -> list[dict]:
        return [{"identity": int(i), "images": int(n), "median_age": float(a), "age_spread": float(s),
                 "gender": str(g), "agreement": float(r)}
                for i, n, a, s, g, r in zip(self.labels, self.images, self.median_age, self.age_spread, self.gender,
                                            self.agreement)]


def identity_attributes(identity, age, gender, gender_confidence=None, mask=None) -> IdentityAttributes:
    """The summaries of every identity in `identity` over its images in `mask` (default: every image
    with a measured gender)."""
    labels_in = _as_labels(identity)
    age = np.asarray(age, dtype=np.float64)
    gender = np.asarray(gender, dtype=object)
    conf = np.ones(age.size) if gender_confidence is None else np.asarray(gender_confidence, dtype=np.float64)
    measured = np.isin(gender, GENDERS) & np.isfinite(age)
    mask = measured if mask is None else np.asarray(mask, dtype=bool) & measured
    labels, inv = np.unique(labels_in, return_inverse=True)
    n = labels.size
    images = np.bincount(inv[mask], minlength=n)
    votes = np.stack([np.bincount(inv[mask & (gender == g)], minlength=n) for g in GENDERS])
    weight = np.stack([np.bincount(inv[mask & (gender == g)], weights=conf[mask & (gender == g)], minlength=n)
                       for g in GENDERS])
    # most votes, then the larger summed confidence (below one vote), then GENDERS' order
    order = np.argmax(votes * (float(images.max(initial=0)) + 1.0) + weight, axis=0)
    majority = np.where(images > 0, np.array(GENDERS, dtype=object)[order], "")
    agree = np.bincount(inv[mask & (gender == majority[inv])], minlength=n)
    median = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    rows = np.flatnonzero(mask)
    rows = rows[np.argsort(inv[rows], kind="stable")]  # grouped by identity: one pass, not one scan per identity
    starts = np.concatenate([[0], np.cumsum(images)])
    for k in np.flatnonzero(images):
        ages = age[rows[starts[k]:starts[k + 1]]]
        median[k] = np.median(ages)
        p25, p75 = np.percentile(ages, [25, 75])
        spread[k] = p75 - p25
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(images > 0, agree / np.maximum(images, 1), np.nan)
    return IdentityAttributes(labels, images, median, spread, majority.astype(object), agreement)


def attribute_drift(identity, age, gender, judged, max_age_gap: float, gender_confidence=None) -> np.ndarray:
    """Boolean mask: images among `judged` whose gender is not their identity's majority, or whose age is
    more than `max_age_gap` years from their identity's median (both over the identity's judged images)."""
    summary = identity_attributes(identity, age, gender, gender_confidence, judged)
    row = summary.of(identity)
    age = np.asarray(age, dtype=np.float64)
    gender = np.asarray(gender, dtype=object)
    judged = np.asarray(judged, dtype=bool) & np.isin(gender, GENDERS)
    off = (gender != summary.gender[row]) | (np.abs(age - summary.median_age[row]) > max_age_gap)
    return judged & off


def inconsistent_identities(identity, reason, max_share: float) -> np.ndarray:
    """The labels (ascending) with more than `max_share` of their judged images (reason not in UNJUDGED)
    dropped as attribute_drift."""
    labels, inv = np.unique(_as_labels(identity), return_inverse=True)
    reason = np.asarray(reason, dtype=object)
    judged = ~np.isin(reason, UNJUDGED)
    total = np.bincount(inv[judged], minlength=labels.size)
    drifted = np.bincount(inv[reason == DRIFT], minlength=labels.size)
    return labels[drifted > max_share * np.maximum(total, 1)]


def age_bin_index(ages, bins: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Index into `bins` (in their order) of each age's bin [lo, hi); -1 when in none (or NaN)."""
    ages = np.asarray(ages, dtype=np.float64)
    out = np.full(ages.shape, -1, dtype=np.int64)
    for k, (lo, hi) in enumerate(bins.values()):
        out[(ages >= lo) & (ages < hi)] = k
    return out


def group_of(summary: IdentityAttributes, marginal: str, bins: Sequence[str] | Mapping[str, tuple[float, float]]
             ) -> np.ndarray:
    """Per identity of `summary`, the name of its bin of `marginal` ("gender": its majority; "age": the bin
    of its median age among `bins`, a mapping name -> (lo, hi)); "" when none."""
    if marginal == "gender":
        return np.where(np.isin(summary.gender, list(bins)), summary.gender, "").astype(object)
    index = age_bin_index(summary.median_age, bins)
    names = np.array([*bins, ""], dtype=object)
    return names[index]


@dataclass(frozen=True)
class BinStatus:
    """One bin of a balance target: kept identities in it, its share of all kept identities, the target."""

    marginal: str
    name: str
    count: int
    share: float
    target: float
    tolerance: float

    @property
    def met(self) -> bool:
        return abs(self.share - self.target) <= self.tolerance + 1e-9

    def describe(self, total: int) -> str:
        return (f"{self.marginal} = {self.name!r} holds {self.count} of {total} kept identities "
                f"({100 * self.share:.0f} %), target {100 * self.target:.0f} % ± {100 * self.tolerance:.0f} %")


def balance_report(summary: IdentityAttributes, kept: np.ndarray, targets: Mapping[str, Mapping[str, float]],
                   tolerance: float, age_edges: Mapping[str, tuple[float, float]]) -> list[BinStatus]:
    """Every bin of every marginal in `targets` over the identities of `summary` marked in `kept`
    (a boolean per identity); shares are of all kept identities (one in no bin counts against all)."""
    total = int(np.count_nonzero(kept))
    out = []
    for marginal, shares in targets.items():
        group = group_of(summary, marginal, age_edges if marginal == "age" else list(shares))
        for name, target in shares.items():
            count = int(np.count_nonzero(kept & (group == name)))
            out.append(BinStatus(marginal, name, count, count / total if total else math.nan, float(target),
                                 tolerance))
    return out


def balance_surplus(summary: IdentityAttributes, kept: np.ndarray, targets: Mapping[str, Mapping[str, float]],
                    tolerance: float, age_edges: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """The labels (ascending) to resample so the kept identities move towards `targets`: none when every
    bin is within tolerance; else, per marginal, the identities in no bin and, of each bin holding more
    than round(target * kept), the latest ones (highest labels) beyond that."""
    status = balance_report(summary, kept, targets, tolerance, age_edges)
    if all(s.met for s in status):
        return np.zeros(0, dtype=np.int64)
    total = int(np.count_nonzero(kept))
    chosen = np.zeros(summary.labels.size, dtype=bool)
    for marginal, shares in targets.items():
        group = group_of(summary, marginal, age_edges if marginal == "age" else list(shares))
        chosen |= kept & (group == "")
        for name, target in shares.items():
            rows = np.flatnonzero(kept & (group == name))
            extra = rows.size - int(round(target * total))
            if extra > 0:
                chosen[rows[-extra:]] = True
    return summary.labels[chosen]


def attribute_columns(columns: Mapping[str, np.ndarray]) -> bool:
    """Whether manifest `columns` (name -> array) hold measured attributes (FIELDS)."""
    return all(name in columns for name in FIELDS)
