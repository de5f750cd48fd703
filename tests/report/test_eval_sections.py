"""The dataset report lists every benchmark section of a trained recogniser's results.json (IJB-B/C, TinyFace,
RFW, any other protocol's) beside the five-set average; sections found at results[NAME] or below, in
fractions or percent."""

from __future__ import annotations

import json

import pytest

from synthface.report import write_report
from synthface.report.recognisers import find_section, read_results, recogniser_results
from tests.helpers.report import hand_example

# what `synthface eval RUN --bins B --benchmark ijbc=... --benchmark rfw=... --benchmark toy=...` writes (fractions)
EVAL = {
    "model": "m", "flip": True, "protocol": "p", "average": 0.9,
    "sets": {"lfw": {"accuracy": 0.98}, "cfp_fp": {"accuracy": 0.82}},
    "folders": {"ijbc": "/data/IJBC", "rfw": "/data/RFW", "toy": "/data/toy"},
    "ijbc": {"tar_at_far": {"1e-06": 0.5, "1e-05": 0.8, "0.0001": 0.9, "0.001": 0.95, "0.01": 0.97, "0.1": 0.99},
             "auc": 0.999, "pairs": 15658489},
    "rfw": {"groups": {"African": {"accuracy": 0.8}, "Asian": {"accuracy": 0.82}, "Caucasian": {"accuracy": 0.9},
                       "Indian": {"accuracy": 0.86}}, "mean": 0.845, "std": 0.04, "tradeoff": 0.805},
    "toy": {"mean_cos": 0.25, "pairs": 3},
}
# another tool's file: percent, sections one level down, FAR keys spelt otherwise, no .bin results
OTHER = {"benchmarks": {"tinyface": {"rank-1": 70.5, "rank-5": 75.0, "rank-20": 79.25},
                        "ijbb": {"tar_at_far": {"1e-4": 88.5, "1e-5": 80.0}}}}


def test_sections_are_found_anywhere_and_read_as_fractions():
    assert find_section(OTHER, "tinyface") is OTHER["benchmarks"]["tinyface"] and find_section(OTHER, "rfw") is None
    mine = read_results(EVAL)
    assert mine["average"] == 0.9 and mine["sets"] == {"lfw": 0.98, "cfp_fp": 0.82}
    assert mine["benchmarks"] == {
        "ijbc": {"TAR@FAR=1e-4": 0.9, "TAR@FAR=1e-5": 0.8},
        "rfw": {"mean": 0.845, "std": 0.04, "tradeoff": 0.805},
        "toy": {"mean_cos": 0.25},  # an unknown protocol: its top-level rates (the pair count is not one)
    }
    theirs = read_results(OTHER)
    assert theirs["average"] is None and theirs["sets"] == {}
    assert theirs["benchmarks"]["tinyface"] == pytest.approx({"rank-1": 0.705, "rank-5": 0.75, "rank-20": 0.7925})
    assert theirs["benchmarks"]["ijbb"] == pytest.approx({"TAR@FAR=1e-4": 0.885, "TAR@FAR=1e-5": 0.8})
    # the five-set block in percent, and from a `--benchmark bin=` section when the top level has none
    assert read_results({"average": 90.0, "sets": {"lfw": {"accuracy": 98.0}}}) == {"average": 0.9, "sets": {"lfw": 0.98}}
    assert read_results({"bin": {"average": 0.7, "sets": {"lfw": {"accuracy": 0.7}}}}) == {"average": 0.7, "sets": {"lfw": 0.7}}
    assert read_results({"model": "m", "flip": True}) is None


def test_report_and_its_command_list_every_section(tmp_path, capsys):
    from tests.cli_helpers import run_cli_inprocess

    root = hand_example(tmp_path / "run")
    for name, data in (("r50", EVAL), ("other", OTHER)):
        (root / "fr" / name).mkdir(parents=True)
        (root / "fr" / name / "results.json").write_text(json.dumps(data))
    assert list(recogniser_results(root)) == ["other", "r50"]
    _, html_path, rep = write_report(root, html=True)
    page = html_path.read_text()
    # the five-set table lists only r50; the benchmarks table both, beside the five-set average
    assert "<td>fr/r50</td><td>82.00</td><td>98.00</td><td>90.00</td>" in page and "<td>fr/other</td><td>-</td><td>" in page
    head = ("<th>run</th><th>five-set average</th><th>ijbb TAR@FAR=1e-4</th><th>ijbb TAR@FAR=1e-5</th>"
            "<th>ijbc TAR@FAR=1e-4</th><th>ijbc TAR@FAR=1e-5</th><th>tinyface rank-1</th><th>tinyface rank-5</th>"
            "<th>tinyface rank-20</th><th>rfw mean</th><th>rfw std</th><th>rfw tradeoff</th><th>toy mean_cos</th>")
    assert head in page  # the known protocols in a fixed order, then the others
    assert ("<td>fr/r50</td><td>90.00</td><td>-</td><td>-</td><td>90.00</td><td>80.00</td><td>-</td><td>-</td><td>-</td>"
            "<td>84.50</td><td>4.00</td><td>80.50</td><td>25.00</td>") in page
    assert ("<td>fr/other</td><td>-</td><td>88.50</td><td>80.00</td><td>-</td><td>-</td><td>70.50</td><td>75.00</td>"
            "<td>79.25</td><td>-</td>") in page

    result = run_cli_inprocess(capsys, "report", root, "--no-html")
    assert result.returncode == 0, result.output
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "recogniser r50 average 90.00 % (lfw 98.00, cfp_fp 82.00)" in text
    assert "recogniser r50 ijbc TAR@FAR=1e-4 90.00, TAR@FAR=1e-5 80.00 %" in text
    assert "recogniser other tinyface rank-1 70.50, rank-5 75.00, rank-20 79.25 %" in text
