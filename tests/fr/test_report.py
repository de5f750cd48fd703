"""The dataset report lists the verification results of recognisers trained on the run (RUN/fr/NAME/results.json)."""

from __future__ import annotations

import json

from synthface.report import write_report
from synthface.report.recognisers import recogniser_results
from tests.helpers.report import hand_example


def results(average: float, **sets: float) -> str:
    return json.dumps({"average": average, "sets": {k: {"accuracy": v, "std": 0.01} for k, v in sets.items()}})


def test_report_shows_trained_recognisers(tmp_path):
    root = hand_example(tmp_path / "run")
    _, _, plain = write_report(root, html=False)
    assert "recognisers" not in plain.data  # nothing trained yet: the report is unchanged

    for name, text in (("r50", results(0.9, lfw=0.98, cfp_fp=0.82)), ("tiny", results(0.6, lfw=0.6)), ("broken", "{")):
        (root / "fr" / name).mkdir(parents=True)
        (root / "fr" / name / "results.json").write_text(text)
    found = recogniser_results(root)
    assert list(found) == ["r50", "tiny"]  # unreadable results are left out
    assert found["r50"] == {"average": 0.9, "sets": {"lfw": 0.98, "cfp_fp": 0.82}}

    json_path, html_path, rep = write_report(root, html=True)
    assert json.loads(json_path.read_text())["recognisers"] == found == rep.data["recognisers"]
    page = html_path.read_text()
    assert "Recognisers trained on this set" in page and "<td>fr/r50</td><td>82.00</td><td>98.00</td><td>90.00</td>" in page
    assert "<td>fr/tiny</td><td>-</td><td>60.00</td><td>60.00</td>" in page


def test_report_command_lists_trained_recognisers(tmp_path, capsys):
    from tests.cli_helpers import run_cli_inprocess

    root = hand_example(tmp_path / "run")
    (root / "fr" / "r50").mkdir(parents=True)
    (root / "fr" / "r50" / "results.json").write_text(results(0.9, lfw=0.98, cfp_fp=0.82))
    result = run_cli_inprocess(capsys, "report", root, "--no-html")
    assert result.returncode == 0, result.output
    assert "recogniser r50" in result.stdout and "average 90.00 % (lfw 98.00, cfp_fp 82.00)" in result.stdout
