"""`synthface report` on the inputs of issue #22: an unknown analyser, a reference of another width, a
run without its identities file (refused, one paragraph, nothing written), `--max-genuine-pairs 0`
(the genuine pairs skipped, and said so), and a run whose images hold no face (the smoke recipe's
random weights): everything that needs no face is written, the rest is skipped and said so, exit 0."""

from __future__ import annotations

import json

import numpy as np

from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.helpers.report import hand_example


def test_unknown_analyser_is_refused_even_when_the_run_has_embeddings(tmp_path, capsys):
    root = hand_example(tmp_path / "run")
    result = run_cli_inprocess(capsys, "report", root, "--analyzer", "banana", "--no-html")
    assert_clean_refusal(result, 2, "unknown face backend 'banana'", "dlib", "insightface")
    assert not (root / "report.json").exists()
    result = run_cli_inprocess(capsys, "report", root, "--analyzer", "dlib", "--no-html")  # known, but not needed
    assert result.returncode == 0 and "--analyzer dlib was not used" in " ".join(result.stdout.split())


def test_reference_of_another_width_is_refused_naming_both_widths(tmp_path, capsys):
    root = hand_example(tmp_path / "run")
    np.save(tmp_path / "wide.npy", np.ones((2, 5), np.float32))
    result = run_cli_inprocess(capsys, "report", root, "--reference", tmp_path / "wide.npy", "--no-html")
    assert_clean_refusal(result, 2, "dimension 5", "dimension 3", "same face analyser")
    assert not (root / "report.json").exists()


def test_reference_of_another_width_on_a_filter_off_run_is_refused_before_embedding(smoke_run_folder, tmp_path, capsys,
                                                                                       monkeypatch):
    """The smoke run has no embeddings: its width is the analyser's (dlib: 128), checked before any image is read."""
    import synthface.report.run as run_module

    def no_embedding(*args, **kwargs):
        raise AssertionError("the reference is checked before the images are embedded")

    monkeypatch.setattr(run_module, "embed_kept_images", no_embedding)
    np.save(tmp_path / "arcface.npy", np.ones((3, 512), np.float32))
    result = run_cli_inprocess(capsys, "report", smoke_run_folder, "--out", tmp_path / "rep",
                               "--reference", tmp_path / "arcface.npy")
    assert_clean_refusal(result, 2, "dimension 512", "dimension 128", "dlib")
    assert not (tmp_path / "rep").exists()


def test_run_without_its_identities_file_is_refused(tmp_path, capsys):
    root = hand_example(tmp_path / "run")
    (root / "identities.safetensors").unlink()
    result = run_cli_inprocess(capsys, "report", root, "--no-html")
    assert_clean_refusal(result, 2, "identities.safetensors is missing", "identity bank", "synthface run")
    assert not (root / "report.json").exists()


def test_max_genuine_pairs_zero_skips_the_genuine_pairs_and_says_so(tmp_path, capsys):
    root = hand_example(tmp_path / "run", images=True)
    result = run_cli_inprocess(capsys, "report", root, "--max-genuine-pairs", "0")
    assert result.returncode == 0, result.output
    data = json.loads((root / "report.json").read_text())
    assert data["verification"] is None
    assert "--max-genuine-pairs 0" in data["skipped"]["verification"]
    assert data["unique_identities"]["0.3"]["final"] == 3 and data["counts"]["kept"] == 11  # the rest is measured
    assert "skipped verification (EER, TAR): genuine pairs skipped (--max-genuine-pairs 0)" in " ".join(result.stdout.split())
    page = (root / "report.html").read_text()
    assert 'id="skipped"' in page and "Skipped: genuine pairs skipped (--max-genuine-pairs 0)" in page
    assert 'alt="genuine and impostor cosine histograms"' not in page


def test_report_of_a_faceless_smoke_run_writes_what_needs_no_face_and_says_what_it_skipped(smoke_run_folder, tmp_path,
                                                                                          capsys):
    """Today's newcomer path offline: `synthface run smoke` then `synthface report`: exit 0, counts,
    drop reasons, the bank's separation and the contact sheet; the face measures skipped, and why."""
    np.save(tmp_path / "real.npy", np.eye(2, 128, dtype=np.float32))  # dlib's width: accepted, then skipped
    out = tmp_path / "rep"
    result = run_cli_inprocess(capsys, "report", smoke_run_folder, "--out", out, "--reference", tmp_path / "real.npy")
    assert result.returncode == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    data = json.loads((out / "report.json").read_text())
    c = data["counts"]
    assert (c["candidates"], c["kept"], c["dropped"]) == (32, 32, 0)
    assert (c["identities_in_bank"], c["identities_generated"], c["identities_with_images"]) == (8, 8, 8)
    assert set(c["drop_reasons"].values()) == {0}
    bank = data["identity_bank"]
    assert bank["count"] == 8 and bank["source"] == "recorded" and 0 < bank["max_cos"] <= 0.3  # the recipe's max_cos
    assert sum(bank["histogram"]["counts"]) == 8
    assert data["verification"] is data["unique_identities"] is data["intra_class"] is data["leakage"] is None
    assert set(data["skipped"]) >= {"verification", "unique_identities", "intra_class", "leakage"}
    assert all("found no face in any of the 32 kept images" in data["skipped"][k] for k in ("verification", "leakage"))

    said = " ".join(result.stdout.split())
    assert "skipped verification (EER, TAR), unique identities, intra-class spread, leakage: dlib found no face" in said
    assert "random weights" in said and "Traceback" not in result.output
    page = (out / "report.html").read_text()
    assert 'id="skipped"' in page and "found no face in any of the 32 kept images" in page
    for alt in ("drop reasons", "identity bank separation", "contact sheet"):
        assert f'alt="{alt}"' in page, alt
    assert page.count("data:image/png;base64,") == 3
    assert not (smoke_run_folder / "report.json").exists()  # the run folder is left as it was
