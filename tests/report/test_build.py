"""report.json against brute-force recomputation on hand-built run folders, and the CLI."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from synthface.errors import FileFormatError
from synthface.report import ReportOptions, compute_report, load_run, write_report
from synthface.report.metrics import _pair_from_index, class_pass, impostor_scores
from tests.cli_helpers import assert_clean_refusal, run_cli, run_cli_inprocess
from tests.helpers.report import hand_example, write_run

# ---------------------------------------------------------------- brute-force definitions


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_scores(labels, emb, kept):
    rows = [i for i in range(len(labels)) if kept[i]]
    gen, imp = [], []
    for a, b in combinations(rows, 2):
        s = float(unit(emb[a]) @ unit(emb[b]))
        (gen if labels[a] == labels[b] else imp).append(s)
    return np.array(gen), np.array(imp)


def brute_eer(gen, imp):
    best = None
    for t in sorted({-2.0, *gen.tolist(), *imp.tolist()}):
        far = sum(s > t for s in imp) / len(imp)
        frr = sum(s <= t for s in gen) / len(gen)
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2, t)
    return best[1], best[2]


def brute_tar(gen, imp, far):
    for t in sorted({-2.0, *imp.tolist()}):
        if sum(s > t for s in imp) <= far * len(imp) + 1e-9:
            return sum(s > t for s in gen) / len(gen), t


def brute_greedy(centres, t):
    kept = []
    for i, c in enumerate(centres):
        if np.isfinite(c).all() and all(c @ centres[j] <= t for j in kept):
            kept.append(i)
    return kept


def load_example(root: Path):
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    table = pq.read_table(root / "manifest.parquet").to_pydict()
    return np.array(table["identity"]), load_file(str(root / "embeddings.safetensors"))["embeddings"], np.array(table["kept"]), table


# ---------------------------------------------------------------- tests


def test_every_metric_matches_brute_force_on_the_hand_example(tmp_path):
    root = hand_example(tmp_path / "run")
    reference = np.array([[1, 0, 0], [0, 0, -1], [0.2, 0.2, 0.95]], np.float32)
    rep = compute_report(load_run(root), reference, ReportOptions(leak_cos=0.4)).data
    labels, emb, kept, table = load_example(root)
    n_ids = 5

    c = rep["counts"]
    assert (c["candidates"], c["kept"], c["dropped"]) == (15, 11, 4)
    assert c["drop_reasons"] == {"no_face": 1, "low_similarity": 1, "low_quality": 0, "near_duplicate": 1, "surplus": 1, "collision": 0, "replaced": 0, "too_few": 0, "attribute_drift": 0}
    assert (c["identities_in_bank"], c["identities_generated"], c["identities_with_images"]) == (5, 5, 5)
    per_id = np.bincount(labels[kept], minlength=n_ids)
    assert per_id.tolist() == [3, 2, 3, 2, 1]
    assert c["images_per_identity"]["mean"] == pytest.approx(per_id.mean())
    assert c["images_per_identity"]["median"] == pytest.approx(np.median(per_id))

    gen, imp = brute_scores(labels, emb, kept)
    v = rep["verification"]
    assert (v["genuine_pairs"], v["impostor_pairs"]) == (len(gen), len(imp)) == (3 + 1 + 3 + 1, math.comb(11, 2) - 8)
    assert v["genuine_exact"] and v["impostor_exact"]
    assert v["genuine_mean"] == pytest.approx(gen.mean(), abs=1e-6)
    assert v["impostor_mean"] == pytest.approx(imp.mean(), abs=1e-6)
    eer, eer_t = brute_eer(gen, imp)
    assert v["eer"] == pytest.approx(eer, abs=1e-9) and v["eer_threshold"] == pytest.approx(eer_t, abs=1e-6)
    for far in ("0.001", "0.0001"):
        tar, t = brute_tar(gen, imp, float(far))
        assert v["tar_at_far"][far]["tar"] == pytest.approx(tar)
        assert v["tar_at_far"][far]["threshold"] == pytest.approx(t, abs=1e-6)
        assert v["tar_at_far"][far]["reliable"] is False  # 45 impostor pairs cannot measure 1e-3
    edges = np.linspace(-1, 1, 201)
    assert v["histogram"]["genuine"] == np.histogram(gen, edges)[0].tolist()
    assert v["histogram"]["impostor"] == np.histogram(imp, edges)[0].tolist()

    centres = np.stack([unit(unit(emb[(labels == i) & kept]).sum(0)) for i in range(n_ids)])
    for t in ("0.3", "0.4"):
        curve = rep["unique_identities"][t]
        assert brute_greedy(centres, float(t)) == [0, 1, 2]  # by hand: 3 is a copy of 0, 4 is too close to all
        assert curve["generated"] == [1, 2, 3, 4, 5] and curve["unique"] == [1, 2, 3, 3, 3] and curve["final"] == 3

    cos = np.array([unit(emb[i]) @ centres[labels[i]] for i in range(15) if kept[i]])
    s = rep["intra_class"]
    assert s["cos_to_centre"]["mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert s["cos_to_centre"]["p05"] == pytest.approx(np.percentile(cos, 5), abs=1e-6)
    assert s["share_within"] == {"0.5": pytest.approx(np.mean(cos >= 0.5)), "0.7": pytest.approx(np.mean(cos >= 0.7))}
    klab = labels[kept]
    assert s["identity_mean_cos"]["min"] == pytest.approx(min(cos[klab == i].mean() for i in range(n_ids)), abs=1e-6)

    yaw = np.array(table["yaw"])[kept]
    assert rep["pose"]["yaw"]["mean"] == pytest.approx(yaw.mean(), abs=1e-5)
    assert rep["pose"]["yaw"]["p95"] == pytest.approx(np.percentile(yaw, 95), abs=1e-4)
    assert sum(rep["pose"]["pitch"]["histogram"]["counts"]) == 11

    bank = unit(np.eye(5, 3) + 0.01)  # the bank hand_example writes, with no recorded nearest cosines
    gram = bank @ bank.T
    np.fill_diagonal(gram, -np.inf)
    b = rep["identity_bank"]
    assert (b["count"], b["dim"], b["source"]) == (5, 3, "computed")
    assert b["max_cos"] == pytest.approx(gram.max(), abs=1e-6)
    assert b["nearest_cos"]["mean"] == pytest.approx(gram.max(axis=1).mean(), abs=1e-6)
    assert rep["skipped"] == {}

    lk = rep["leakage"]
    ref = unit(reference)
    best = [(float((centres[i] @ ref.T).max()), int((centres[i] @ ref.T).argmax()), i) for i in range(n_ids)]
    flagged = sorted([b for b in best if b[0] > 0.4], key=lambda b: -b[0])
    assert [(f["identity"], f["reference"]) for f in lk["flagged"]] == [(i, r) for _, r, i in flagged]
    assert [f["cos"] for f in lk["flagged"]] == pytest.approx([b[0] for b in flagged], abs=1e-6)
    assert {f["identity"] for f in lk["flagged"]} == {0, 2, 3, 4}  # by hand: 1 (the y axis) matches no one
    assert lk["max_cos"] == pytest.approx(max(b[0] for b in best), abs=1e-6)
    json.dumps(rep, allow_nan=False)  # strict JSON


def test_sampled_pairs_are_true_pairs_and_chunking_changes_nothing():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, size=60)
    labels = np.repeat(np.arange(60), sizes)
    rng.shuffle(labels)  # manifest rows need not be grouped by identity
    emb = unit(rng.standard_normal((labels.size, 8)) + 2 * np.eye(60, 8)[labels % 8]).astype(np.float32)
    kept = rng.random(labels.size) > 0.2
    gen, imp = brute_scores(labels, emb, kept)
    whole = class_pass(emb, labels, kept, max_genuine_pairs=10**6)
    chunked = class_pass(emb, labels, kept, max_genuine_pairs=10**6, chunk_rows=7)
    assert whole.genuine_exact and np.allclose(np.sort(whole.genuine), np.sort(gen), atol=1e-6)
    np.testing.assert_allclose(chunked.genuine, whole.genuine, atol=1e-6)
    np.testing.assert_allclose(chunked.centres, whole.centres, atol=1e-6, equal_nan=True)
    sampled = class_pass(emb, labels, kept, max_genuine_pairs=50, chunk_rows=7, seed=3)
    assert not sampled.genuine_exact and sampled.genuine.size == 50 and sampled.genuine_pairs_total == gen.size
    assert np.abs(sampled.genuine[:, None] - gen[None, :]).min(axis=1).max() < 1e-6
    scores, exact = impostor_scores(emb, labels, whole.rows, images=40)
    assert not exact and scores.size > 600
    assert np.abs(scores[:, None] - imp[None, :]).min(axis=1).max() < 1e-6
    all_scores, exact = impostor_scores(emb, labels, whole.rows, images=10**4)
    assert exact and np.allclose(np.sort(all_scores), np.sort(imp), atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 7, 50, 401])
def test_pair_index_decoding(n):
    i, j = _pair_from_index(np.arange(n * (n - 1) // 2), np.full(n * (n - 1) // 2, n))
    assert list(zip(i.tolist(), j.tolist())) == list(combinations(range(n), 2))


def test_cli_writes_json_and_html_with_plots_and_contact_sheet(tmp_path):
    root = hand_example(tmp_path / "run", images=True)
    np.save(tmp_path / "real.npy", np.array([[1, 0, 0], [0, 0, -1]], np.float32))
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("report", root, "--out", out, "--reference", tmp_path / "real.npy")
    assert proc.returncode == 0, proc.stderr
    assert "unique identities @ cos 0.3" in proc.stdout and "3 of 5" in proc.stdout
    data = json.loads((out / "report.json").read_text())
    assert data["leakage"]["flagged_count"] == 3 and data["counts"]["kept"] == 11
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 8  # reasons, bank, scores, unique, spread, pose, sheet, leakage
    assert 'alt="identity bank separation"' in page and "Skipped" not in page
    assert 'alt="contact sheet"' in page and "http" not in page.replace("http-equiv", "")  # self-contained
    assert not (root / "report.json").exists()


def test_bad_run_folders_raise_format_errors_and_the_cli_prints_one_paragraph(tmp_path, capsys):
    with pytest.raises(FileFormatError, match="is not a folder"):
        load_run(tmp_path / "missing")
    root = hand_example(tmp_path / "run")
    (root / "embeddings.safetensors").write_bytes(b"\x08\x00")
    with pytest.raises(FileFormatError, match="safetensors"):
        load_run(root)
    (root / "manifest.parquet").write_bytes(b"PAR1")
    with pytest.raises(FileFormatError, match="Parquet"):
        load_run(root)
    np.save(tmp_path / "wrong_dim.npy", np.ones((2, 5), np.float32))
    root = hand_example(tmp_path / "run2")
    result = run_cli_inprocess(capsys, "report", root, "--reference", tmp_path / "wrong_dim.npy", "--no-html")
    assert_clean_refusal(result, 2, "dimension")
    assert not (root / "report.json").exists()


def test_kept_row_without_embedding_is_a_format_error(tmp_path):
    root = write_run(tmp_path / "run", [0, 0, 1], np.array([[1, 0], [np.nan, np.nan], [0, 1]]), [True, True, True], ["", "", ""])
    with pytest.raises(FileFormatError, match="marked kept"):
        write_report(root, html=False)


def test_run_without_kept_images_still_reports(tmp_path):
    root = write_run(tmp_path / "run", [0, 1], np.full((2, 4), np.nan), [False, False], ["no_face", "no_face"])
    _, _, rep = write_report(root, html=True)
    d = rep.data
    assert d["counts"]["kept"] == 0 and d["verification"]["eer"] is None
    assert d["unique_identities"]["0.3"]["unique"] == [0, 0]
    assert (root / "report.html").exists()
