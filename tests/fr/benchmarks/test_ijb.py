"""fr.benchmarks.ijb: on a tiny IJB-C folder in the release layout (real photos, true landmarks), the results
equal an independent re-implementation of arcface_torch eval_ijbc.py written below (its loops, scikit-image's
alignment, sklearn's ROC transcribed); each protocol mistake gives other numbers on that folder; the ROC
equals the transcription on random tied scores; malformed folders are refused naming the file and line."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthface.errors import FileFormatError
from synthface.fr import benchmarks
from synthface.fr.benchmarks import ijb
from synthface.fr.benchmarks.embeddings import EmbeddingCache
from synthface.fr.benchmarks.recognizers import Recognizer
from tests.helpers.ijb_layout import build_ijb_layout

FARS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
KEYS = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
# eval_ijbc.py's template: the 96 x 112 points with x + 8
SRC = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
               dtype=np.float32) + np.array([8.0, 0.0], dtype=np.float32)


def toy_forward(calls: list[int] | None = None):
    """A tiny random two-layer net on (x / 255 - 0.5) / 0.5, 4 x 4 average-pooled: channel order matters."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((28 * 28 * 3, 64)).astype(np.float32) / np.float32(np.sqrt(28 * 28 * 3))
    w2 = rng.standard_normal((64, 32)).astype(np.float32) / 8

    def forward(crops):
        if calls is not None:
            calls.append(len(crops))
        x = (crops.astype(np.float32) / 255 - 0.5) / 0.5
        x = x.reshape(len(crops), 28, 4, 28, 4, 3).mean((2, 4)).reshape(len(crops), -1)
        return np.maximum(x @ w1, 0) @ w2

    return forward


# ----------------------------------------------------------------------------------------------- the reference


def sklearn_roc(label, score):
    """sklearn.metrics.roc_curve's defaults, transcribed as loops: a point per distinct score from the top,
    interior points whose neighbours are collinear with them dropped, (0, 0) first."""
    label, score = np.asarray(label), np.asarray(score)
    points = []
    for threshold in sorted(set(score.tolist()), reverse=True):
        accepted = score >= threshold
        points.append((int(np.sum(accepted & (label == 0))), int(np.sum(accepted & (label == 1)))))
    if len(points) > 2:
        kept = [points[0]]
        for i in range(1, len(points) - 1):
            (f0, t0), (f1, t1), (f2, t2) = points[i - 1], points[i], points[i + 1]
            if f2 - 2 * f1 + f0 != 0 or t2 - 2 * t1 + t0 != 0:
                kept.append(points[i])
        points = [*kept, points[-1]]
    points = [(0, 0), *points]
    fps, tps = np.array(points, dtype=np.float64).T
    return fps / fps[-1], tps / tps[-1]


@functools.cache
def reference_faces(root: Path, target: str = "ijbc", bgr: bool = False):
    """eval_ijbc.py's face features [f(x) | f(mirror x)] and detector scores (cached: read once per folder)."""
    import cv2
    from skimage.transform import SimilarityTransform

    forward = toy_forward()
    feats, faceness = [], []
    for line in (root / "meta" / f"{target}_name_5pts_score.txt").read_text().splitlines():
        f = line.strip().split(" ")
        img = cv2.imread(str(root / "loose_crop" / f[0]))
        lmk = np.array([float(x) for x in f[1:-1]], dtype=np.float32).reshape((5, 2))
        # fitted in float64: scikit-image >= 0.2x keeps float32 points in float32, which moves the matrix by
        # ~3e-5 and template cosines by as much (FR-EVAL.md: an alignment-code artefact, not the protocol)
        m = SimilarityTransform.from_estimate(lmk.astype(np.float64), SRC.astype(np.float64)).params[0:2, :]
        crop = cv2.warpAffine(img, m, (112, 112), borderValue=0.0)
        if not bgr:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        out = forward(np.stack([crop, np.fliplr(crop)]))
        feats.append(np.concatenate([out[0], out[1]]))
        faceness.append(f[-1])
    return np.array(feats, dtype=np.float32), np.array(faceness).astype(np.float32)


def reference(root: Path, target: str = "ijbc", *, bgr=False, flip=True, norm=True, detector=True, media=True,
              interpolate=False):
    """eval_ijbc.py step by step; the keywords switch one step off (the mistakes the test must catch)."""
    rows = [line.split(" ") for line in (root / "meta" / f"{target}_face_tid_mid.txt").read_text().splitlines()]
    templates = np.array([int(r[1]) for r in rows])
    medias = np.array([int(r[2]) for r in rows])
    img_feats, scores = reference_faces(root, target, bgr)
    half = img_feats.shape[1] // 2
    x = img_feats[:, :half] + img_feats[:, half:] if flip else img_feats[:, :half]
    if not norm:
        x = x / np.sqrt(np.sum(x**2, -1, keepdims=True))
    if detector:
        x = x * scores[:, np.newaxis]
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), x.shape[1]))
    for c, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = x[ind_t], medias[ind_t]
        if not media:
            template_feats[c] = np.sum(face_feats, axis=0)
            continue
        media_feats = []
        for u, ct in zip(*np.unique(face_medias, return_counts=True)):
            (ind_m,) = np.where(face_medias == u)
            media_feats += [face_feats[ind_m]] if ct == 1 else [np.mean(face_feats[ind_m], axis=0, keepdims=True)]
        template_feats[c] = np.sum(np.array(media_feats), axis=0)
    norm_feats = template_feats / np.sqrt(np.sum(template_feats**2, -1, keepdims=True))
    pairs = [line.split(" ") for line in (root / "meta" / f"{target}_template_pair_label.txt").read_text().splitlines()]
    row_of = {t: i for i, t in enumerate(unique_templates.tolist())}
    score = np.array([norm_feats[row_of[int(a)]] @ norm_feats[row_of[int(b)]] for a, b, _ in pairs])
    label = np.array([int(p[2]) for p in pairs])
    fpr, tpr = sklearn_roc(label, score)
    area = np.trapezoid(tpr, fpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    tars = []
    for far in FARS:
        if interpolate:
            tars.append(float(np.interp(far, fpr[::-1], tpr[::-1])))
        else:
            _, k = min(zip(abs(fpr - far), range(len(fpr))))
            tars.append(float(tpr[k]))
    return np.array(tars), float(area), score


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return build_ijb_layout(tmp_path_factory.mktemp("ijb") / "IJBC")


@pytest.fixture(scope="module")
def truth(layout):
    return reference(layout.root)


def recognizer(calls=None):
    return Recognizer(toy_forward(calls), 112, "toy")


# ----------------------------------------------------------------------------------------------- results


def test_results_equal_the_reference_procedure(layout, truth):
    bench = benchmarks.get_benchmark("ijbc")
    section = bench.evaluate(recognizer(), bench.find(layout.root))
    tars, area, _ = truth
    assert list(section["tar_at_far"]) == KEYS
    np.testing.assert_allclose([section["tar_at_far"][k] for k in KEYS], tars, rtol=0, atol=1e-6)
    assert abs(section["auc"] - area) < 1e-5
    genuine = int(layout.pairs[:, 2].sum())
    assert (section["pairs"], section["genuine"], section["impostor"]) == (len(layout.pairs), genuine, len(layout.pairs) - genuine)
    assert section["templates"] == len(set(layout.templates.tolist())) and section["faces"] == len(layout.names)
    assert section["mode"] == "N1D1F2" and section["full_release"] is False
    # 630 pairs, 540 impostors: FARs below 1 / 1080 read the FPR-0 point; mid-range numbers, not saturated
    assert section["fpr_at_far"]["1e-06"] == 0 and 0.05 < tars[0] < tars[-1] < 0.95
    assert [label for label, _ in ijb.rows(section)][:2] == ["TAR@FAR=1e-06 %", "TAR@FAR=1e-05 %"]
    # the pair scores themselves agree (so the equality above does not hang on a near tie)
    meta = ijb.load_ijb(ijb.find_ijbc(layout.root)[0])
    scores = ijb.pair_scores(ijb.template_features(ijb.embed_faces(recognizer(), meta), meta), meta.left, meta.right)
    np.testing.assert_allclose(scores, truth[2], rtol=0, atol=1e-6)


def test_each_protocol_mistake_gives_other_numbers_on_the_layout(layout, truth):
    tars, area, _ = truth
    step = 1 / int(layout.pairs[:, 2].sum())  # one genuine pair
    for mistake in ("detector", "media", "norm", "flip"):
        wrong_tars, wrong_area, _ = reference(layout.root, **{mistake: False})
        assert np.abs(wrong_tars - tars).max() >= step - 1e-9 and abs(wrong_area - area) > 1e-4, mistake
    for mistake in ("bgr", "interpolate"):
        wrong_tars, wrong_area, _ = reference(layout.root, **{mistake: True})
        assert np.abs(wrong_tars - tars).max() > 1e-3, mistake
    assert abs(reference(layout.root, bgr=True)[1] - area) > 1e-4


@pytest.mark.parametrize("mode,keywords", [("N1D0F2", dict(detector=False)), ("N0D1F2", dict(norm=False))])
def test_the_other_published_modes_equal_the_reference_with_that_step_changed(layout, mode, keywords):
    tars, area, _ = reference(layout.root, **keywords)
    section = ijb.evaluate(recognizer(), ijb.find_ijbc(layout.root),
                           detector_score=keywords.get("detector", True), keep_norms=keywords.get("norm", True))
    assert section["mode"] == mode
    np.testing.assert_allclose([section["tar_at_far"][k] for k in KEYS], tars, rtol=0, atol=1e-6)
    assert abs(section["auc"] - area) < 1e-5


def test_roc_equals_the_transcription_on_random_tied_scores():
    rng = np.random.default_rng(3)
    for case in range(60):
        n = int(rng.integers(3, 80))
        label = rng.integers(0, 2, n)
        label[:2] = [0, 1]
        score = np.round(rng.standard_normal(n), int(rng.integers(0, 3)))  # few levels: many ties
        fpr, tpr = ijb.roc_curve(label.astype(bool), score)
        want_fpr, want_tpr = sklearn_roc(label, score)
        np.testing.assert_array_equal(fpr, want_fpr, err_msg=f"case {case}")
        np.testing.assert_array_equal(tpr, want_tpr, err_msg=f"case {case}")
        got, _ = ijb.tar_at_far(fpr, tpr, [0.3, 0.5])
        rf, rt = np.flipud(want_fpr), np.flipud(want_tpr)
        assert got == [float(rt[min(zip(abs(rf - far), range(len(rf))))[1]]) for far in (0.3, 0.5)]
        assert abs(ijb.auc(fpr, tpr) - np.trapezoid(want_tpr, want_fpr)) < 1e-12


def test_a_second_run_with_the_cache_embeds_nothing(layout, tmp_path, truth):
    calls: list[int] = []
    seen: list[int] = []
    cache = EmbeddingCache(tmp_path, benchmark="ijbc", model_key="toy")
    first = ijb.evaluate(recognizer(calls), ijb.find_ijbc(layout.root), cache=cache, progress=seen.append)
    assert sum(calls) == 2 * len(layout.names) and sum(seen) == len(layout.names)
    calls.clear()
    again = ijb.evaluate(recognizer(calls), ijb.find_ijbc(layout.root), cache=EmbeddingCache(tmp_path, benchmark="ijbc", model_key="toy"))
    assert calls == [] and again["tar_at_far"] == first["tar_at_far"] and again["auc"] == first["auc"]


def test_template_pooling_in_small_blocks_is_the_same(layout, monkeypatch):
    meta = ijb.load_ijb(ijb.find_ijbc(layout.root)[0])
    raw = np.random.default_rng(0).standard_normal((meta.faces, 32)).astype(np.float32)
    whole = ijb.template_features(raw, meta)
    monkeypatch.setattr(ijb, "BLOCK_VALUES", 40)  # about one template a block, one pair a block
    np.testing.assert_allclose(ijb.template_features(raw, meta), whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ijb.pair_scores(whole, meta.left, meta.right),
                               np.einsum("ij,ij->i", whole[meta.left], whole[meta.right]), rtol=0, atol=1e-12)


def test_ijbb_reads_its_own_file_names(tmp_path):
    layout = build_ijb_layout(tmp_path / "IJBB", target="ijbb", templates_per_person=2, seed=1)
    bench = benchmarks.get_benchmark("ijbb")
    section = bench.evaluate(recognizer(), bench.find(layout.root))
    tars, area, _ = reference(layout.root, "ijbb")
    np.testing.assert_allclose([section["tar_at_far"][k] for k in KEYS], tars, rtol=0, atol=1e-6)
    assert abs(section["auc"] - area) < 1e-5
    with pytest.raises(FileFormatError, match=r"missing .*ijbc_face_tid_mid\.txt.*is this the IJBB folder"):
        benchmarks.get_benchmark("ijbc").find(layout.root)


# ----------------------------------------------------------------------------------------------- refusals


def test_find_names_what_is_missing(layout, tmp_path):
    with pytest.raises(FileFormatError, match="does not exist"):
        ijb.find_ijbc(tmp_path / "nowhere")
    (tmp_path / "IJBC").mkdir()
    with pytest.raises(FileFormatError, match=r"missing .*loose_crop, .*ijbc_face_tid_mid\.txt, .*ijbc_name_5pts_score\.txt, "
                       r".*ijbc_template_pair_label\.txt"):
        ijb.find_ijbc(tmp_path / "IJBC")
    release = tmp_path / "IJB_release"
    release.mkdir()
    (release / "IJBC").symlink_to(layout.root)
    with pytest.raises(FileFormatError, match=r"top folder; pass .*IJB_release/IJBC"):
        ijb.find_ijbc(release)


def _edit(path: Path, line: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind,line,new,message", [
    ("face_tid_mid", 3, "3.jpg 1 2 9", r"line 3: 4 fields; a row is `name template_id media_id`"),
    ("face_tid_mid", 4, "4.jpg one 2", r"line 4: template or media id 'one'"),
    ("name_5pts_score", 5, "5.jpg 1 2 3 4 5 6 7 8 9 10", r"line 5: 11 fields"),
    ("name_5pts_score", 4, "4.jpg 1 2 3 4 5 6 7 8 9 10 high", r"line 4: the detector score 'high' is not a number"),
    ("name_5pts_score", 6, "6.jpg 1 2 3 x 5 6 7 8 9 10 0.9", r"line 6: landmark coordinate 4 'x' is not a number"),
    ("name_5pts_score", 2, "3.jpg 1 2 3 4 5 6 7 8 9 10 0.9", r"line 2: names '3.jpg', but row 2 of .*face_tid_mid.txt names '2.jpg'"),
    ("name_5pts_score", 147, None, r"holds 146 rows but .* holds 147"),
    ("template_pair_label", 7, "7 99999 0", r"line 7: template 99999 belongs to no face of .*ijbc_face_tid_mid\.txt"),
    ("template_pair_label", 2, "7 10", r"line 2: 2 fields; a row is `template1 template2 label`"),
    ("template_pair_label", 5, "7 x 1", r"line 5: 'x' is not an integer"),
    ("template_pair_label", 8, "7 10 2", r"line 8: the label is 2; it must be 1 \(genuine\) or 0"),
])
def test_malformed_meta_files_name_the_file_and_line(layout, tmp_path, kind, line, new, message):
    root = shutil.copytree(layout.root, tmp_path / "IJBC")
    path = root / "meta" / f"ijbc_{kind}.txt"
    _edit(path, line, new)
    with pytest.raises(FileFormatError, match=message) as err:
        ijb.evaluate(recognizer(), ijb.find_ijbc(root))
    assert (f"{path}, line {line}:" if message.startswith("line") else str(path)) in str(err.value)


def test_missing_and_unreadable_images_are_named(layout, tmp_path):
    root = shutil.copytree(layout.root, tmp_path / "IJBC")
    (root / "loose_crop" / "3.jpg").unlink()
    with pytest.raises(FileFormatError, match=r"ijbc_name_5pts_score\.txt, line 3: the image .*loose_crop/3\.jpg does not exist"):
        ijb.load_ijb(ijb.find_ijbc(root)[0])
    (root / "loose_crop" / "3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FileFormatError, match=r"loose_crop/3\.jpg \(line 3 of .*ijbc_name_5pts_score\.txt\) cannot be read"):
        ijb.evaluate(recognizer(), ijb.find_ijbc(root))
