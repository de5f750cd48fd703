"""The report's "who is in the set" section (issue 26) against an independent computation, by hand, of
its summaries and of verification per attribute group."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from synthface.report import compute_report, load_run
from tests.helpers.report import write_run
from tests.report.test_build import brute_eer, brute_scores, brute_tar

# identity -> its images' (age, gender); identity 1 has one image of the other gender, identity 3 one much older
PEOPLE = {
    0: [(22, "female"), (25, "female"), (24, "female")],
    1: [(40, "male"), (44, "male"), (39, "female"), (41, "male")],
    2: [(35, "female"), (33, "female"), (36, "female")],
    3: [(62, "male"), (58, "male"), (90, "male")],
    4: [(50, "male"), (49, "male")],
}


def _run(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [i for i, imgs in PEOPLE.items() for _ in imgs]
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((len(PEOPLE), 16))
    emb = centres[labels] + 0.6 * rng.standard_normal((len(labels), 16))
    kept = np.ones(len(labels), bool)
    kept[-1] = False  # identity 4's last image is dropped: never counted
    write_run(root, labels, emb, kept, ["" if k else "surplus" for k in kept])
    table = pq.read_table(root / "manifest.parquet")
    attrs = [a for imgs in PEOPLE.values() for a in imgs]
    for name, values in (("age", [float(a) for a, _ in attrs]), ("age_confidence", [0.5] * len(attrs)),
                         ("gender", [g for _, g in attrs]), ("gender_confidence", [0.9] * len(attrs))):
        table = table.append_column(name, pa.array(values))
    pq.write_table(table, root / "manifest.parquet")
    return np.array(labels), emb, kept


def test_who_is_in_the_set_matches_a_hand_computation(tmp_path):
    labels, emb, kept = _run(tmp_path / "run")
    who = compute_report(load_run(tmp_path / "run")).data["who"]
    kept_people = {i: [a for a, k in zip(imgs, kept[labels == i]) if k] for i, imgs in PEOPLE.items()}

    assert who["images"]["gender"] == {"female": 7, "male": 7}
    assert who["identities"]["gender"] == {"female": 2, "male": 3}  # identity 1's majority is male
    medians = [statistics.median(a for a, _ in imgs) for imgs in kept_people.values()]
    assert who["identities"]["median_age"]["median"] == pytest.approx(statistics.median(medians))
    assert who["identities"]["age_groups"] == {"0-30": 1, "30-45": 2, "45-60": 1, "60-150": 1}
    agreement = [max(sum(g == x for _, x in imgs) for g in ("female", "male")) / len(imgs)
                 for imgs in kept_people.values()]
    assert who["consistency"]["gender_agreement"]["mean"] == pytest.approx(np.mean(agreement))
    assert who["consistency"]["gender_agreement"]["min"] == pytest.approx(0.75)
    worst = who["consistency"]["least_consistent"][0]
    assert (worst["identity"], worst["gender"], worst["agreement"]) == (1, "male", 0.75)
    assert worst["median_age"] == pytest.approx(40.5)
    spread_3 = np.percentile([62, 58, 90], 75) - np.percentile([62, 58, 90], 25)
    assert who["consistency"]["age_spread"]["max"] == pytest.approx(spread_3)
    assert sum(who["images"]["age_histogram"]["counts"]) == 14

    for gender, members in (("female", [0, 2]), ("male", [1, 3, 4])):
        mask = kept & np.isin(labels, members)
        gen, imp = brute_scores(labels, emb, mask)
        got = who["verification_by_group"]["gender"][gender]
        assert got["identities"] == len(members)
        assert (got["genuine_pairs"], got["impostor_pairs"]) == (len(gen), len(imp))
        assert got["eer"] == pytest.approx(brute_eer(gen, imp)[0], abs=1e-9)
        assert got["tar_at_far"]["0.001"] == pytest.approx(brute_tar(gen, imp, 1e-3)[0])
    assert who["verification_by_group"]["age"]["0-30"]["eer"] is None  # one identity: no impostor pairs


def test_the_page_shows_the_section_and_a_run_without_attributes_has_none(tmp_path):
    from synthface.report import write_report

    _run(tmp_path / "run")
    _, html_path, _ = write_report(tmp_path / "run")
    page = html_path.read_text()
    assert "Who is in the set" in page and "apparent age and gender histograms" in page and "TAR @ FAR 0.001" in page
    write_run(tmp_path / "plain", [0, 0, 1, 1], np.eye(4, 16), [True] * 4, [""] * 4)
    assert "who" not in compute_report(load_run(tmp_path / "plain")).data


def test_groups_split_the_reports_own_sampled_pairs(tmp_path):
    """With sampled pairs (fewer genuine pairs and impostor images than the run has), the groups' scores are
    the report's own: every genuine score lies in exactly one gender group, and a group's impostor scores are
    the report's impostor pairs whose two images both belong to it."""
    from synthface.report import ReportOptions

    labels, emb, kept = _run(tmp_path / "run")
    report = compute_report(load_run(tmp_path / "run"), options=ReportOptions(max_genuine_pairs=6, impostor_images=9))
    v, by = report.data["verification"], report.data["who"]["verification_by_group"]
    assert not v["genuine_exact"] and not v["impostor_exact"] and v["genuine_pairs"] == 6
    assert sum(g["genuine_pairs"] for g in by["gender"].values()) == 6
    assert sum(g["impostor_pairs"] for g in by["gender"].values()) < v["impostor_pairs"] == report.arrays["impostor"].size
    assert sum(g["genuine_pairs"] for g in by["age"].values()) == 6
