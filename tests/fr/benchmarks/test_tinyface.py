"""fr.benchmarks.tinyface on a tiny split in AdaFace's aligned layout (real photos): rank-1/5/20 equal an
independent re-computation of AdaFace/CVLface's protocol (argsort of the full score matrix, float64 features),
and each protocol mistake (BGR, no flip, distractors labelled by their names) would change them; the cache,
the bounded-memory chunking and the errors for malformed folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from synthface.errors import FileFormatError
from synthface.fr.benchmarks import tinyface
from synthface.fr.benchmarks.embeddings import EmbeddingCache
from tests.helpers.tinyface_layout import build_tinyface, tiny_recognizer


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return build_tinyface(tmp_path_factory.mktemp("tinyface"))


# ------------------------------------------------------------------ the reference, written independently


def _files(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(folder) for f in names if f.lower().endswith((".jpg", ".jpeg", ".png"))]


def reference(split: Path, rec, *, rgb: bool = True, flip: bool = True, distractors_by_name: bool = False):
    """AdaFace's validate_tinyface + CVLface's DIR_FAR at FAR 1, in float64: (rates, smallest score gap)."""
    import cv2

    w1, w2 = (w.astype(np.float64) for w in rec.weights)

    def net(img):
        x = (img.astype(np.float64) / 255.0 - 0.5) / 0.5
        x = x.reshape(16, 7, 16, 7, 3).mean(axis=(1, 3)).reshape(-1)
        return np.tanh(x @ w1) @ w2

    features = {}
    for path in _files(split):
        img = cv2.imread(str(path))
        if rgb:
            img = img[:, :, ::-1]
        f = net(img) + (net(img[:, ::-1]) if flip else 0)
        features[path.stem] = f / np.linalg.norm(f)
    probe, match, distractor = (_files(split / s) for s in ("Probe", "Gallery_Match", "Gallery_Distractor"))
    label = lambda p: int(p.name.split("_")[0])  # noqa: E731
    probe_labels = np.array([label(p) for p in probe])
    gallery_labels = np.array([label(p) for p in match] + [label(p) if distractors_by_name else -100 for p in distractor])
    scores = np.stack([features[p.stem] for p in probe]) @ np.stack([features[p.stem] for p in match + distractor]).T
    mates = probe_labels[:, None] == gallery_labels[None, :]
    keep = mates.any(axis=1)
    scores, mates = scores[keep], mates[keep]
    order = np.argsort(scores, axis=1)[:, ::-1]
    sorted_mates = np.take_along_axis(mates, order, axis=1)
    rates = {k: float(sorted_mates[:, :k].any(axis=1).astype(np.float32).mean()) for k in (1, 5, 20)}
    best = np.where(mates, scores, -np.inf).max(axis=1, keepdims=True)
    gaps = np.abs(scores - best)
    gaps[scores == best] = np.inf
    return rates, float(gaps.min())


def _ranks(section):
    return {k: section[f"rank-{k}"] for k in (1, 5, 20)}


# ------------------------------------------------------------------ the protocol


def test_ranks_equal_the_reference_and_the_traps_would_be_caught(split):
    rec = tiny_recognizer()
    section = tinyface.evaluate(rec, tinyface.find(split.parent))  # the folder holding aligned_pad_0.1_pad_high
    want, gap = reference(split, rec)
    assert gap > 1e-4  # no probe's ranking could move under 1e-5 score noise: the comparison below is meaningful
    for k, v in want.items():
        assert section[f"rank-{k}"] == pytest.approx(v, abs=1e-6)
    assert 0 < section["rank-1"] < section["rank-5"] < 1  # a layout that tells ranks apart
    assert (section["probes"], section["probes_without_mate"], section["gallery"], section["distractors"]) == (18, 2, 42, 30)
    # each mistake moves at least one rate by a probe (1/18), far beyond 1e-6
    for trap in ({"rgb": False}, {"flip": False}, {"distractors_by_name": True}):
        wrong, _ = reference(split, rec, **trap)
        assert max(abs(wrong[k] - section[f"rank-{k}"]) for k in (1, 5, 20)) > 0.05, trap
    unflipped = tinyface.evaluate(rec, tinyface.find(split), flip=False)
    want_unflipped, gap = reference(split, rec, flip=False)
    assert gap > 1e-4 and _ranks(unflipped) == pytest.approx(want_unflipped, abs=1e-6) and unflipped["flip"] is False
    assert tinyface.rows(section)[0] == ("rank-1", f"{100 * section['rank-1']:.2f} %")


def test_chunked_scoring_equals_the_full_matrix():
    rng = np.random.default_rng(3)
    probes, gallery = rng.standard_normal((40, 8)).astype(np.float32), rng.standard_normal((300, 8)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    probe_labels = rng.integers(0, 30, 40)
    gallery_labels = np.concatenate([rng.integers(0, 25, 60), np.full(240, -100)])  # labels 25..29: no mate
    scores = probes @ gallery.T
    mates = probe_labels[:, None] == gallery_labels[None, :]
    keep = mates.any(axis=1)
    order = np.argsort(scores[keep], axis=1)[:, ::-1]
    hit = np.take_along_axis(mates[keep], order, axis=1)
    for chunk in (7, 64, 1000):
        rates, n = tinyface.identification_rates(probes, probe_labels, gallery, gallery_labels, (1, 5, 20), chunk=chunk)
        assert n == keep.sum()
        for k in (1, 5, 20):
            assert rates[k] == pytest.approx(hit[:, :k].any(axis=1).mean(), abs=1e-6)


def test_a_rerun_embeds_nothing_and_progress_counts_every_image(split, tmp_path):
    calls, seen = [], []
    rec = tiny_recognizer()
    forward = rec.forward
    rec.forward = lambda crops: calls.append(len(crops)) or forward(crops)
    items = tinyface.find(split)
    first = tinyface.evaluate(rec, items, cache=EmbeddingCache(tmp_path, benchmark="tinyface", model_key="m"), progress=seen.append)
    assert sum(seen) == tinyface.total_images(items) == 20 + 12 + 30 and sum(calls) == 2 * 62
    calls.clear()
    again = tinyface.evaluate(rec, items, cache=EmbeddingCache(tmp_path, benchmark="tinyface", model_key="m"))
    assert calls == [] and _ranks(again) == _ranks(first)
    # the cache keys carry the flip setting: a no-flip run on the same cache embeds again
    tinyface.evaluate(rec, items, flip=False, cache=EmbeddingCache(tmp_path, benchmark="tinyface", model_key="m"))
    assert sum(calls) == 62


# ------------------------------------------------------------------ errors


def test_a_missing_folder_or_the_raw_release_is_named(tmp_path):
    (tmp_path / "Probe").mkdir()
    (tmp_path / "Gallery_Match").mkdir()
    with pytest.raises(FileFormatError, match="has no Gallery_Distractor/"):
        tinyface.find(tmp_path)
    (tmp_path / "raw" / "Testing_Set").mkdir(parents=True)
    with pytest.raises(FileFormatError, match="raw TinyFace release.*aligned_pad_0.1_pad_high"):
        tinyface.find(tmp_path / "raw")
    with pytest.raises(FileFormatError, match="does not exist"):
        tinyface.find(tmp_path / "nowhere")


def _copy(split: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(split, dest / "aligned_pad_0.1_pad_high"))


def test_bad_names_duplicates_and_damaged_images_name_the_file(split, tmp_path):
    copy = _copy(split, tmp_path)
    (copy / "Probe" / "3_1.jpg").rename(copy / "Probe" / "smith_1.jpg")
    with pytest.raises(FileFormatError, match=r"Probe/smith_1\.jpg is named 'smith_1\.jpg'.*integer before the first '_'"):
        tinyface.find(copy)
    (copy / "Probe" / "smith_1.jpg").rename(copy / "Probe" / "3_1.jpg")
    (copy / "Gallery_Distractor" / "extra").mkdir()
    (copy / "Gallery_Distractor" / "extra" / "7_4.jpg").write_bytes((copy / "Probe" / "3_1.jpg").read_bytes())
    with pytest.raises(FileFormatError, match="share the stem '7_4'"):
        tinyface.find(copy)
    (copy / "Gallery_Distractor" / "extra" / "7_4.jpg").unlink()
    (copy / "Gallery_Match" / "12_x.jpg").write_bytes(b"")
    items = tinyface.find(copy)
    with pytest.raises(FileFormatError, match=r"12_x\.jpg is empty"):
        tinyface.evaluate(tiny_recognizer(), items)
    (copy / "Gallery_Match" / "12_x.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(FileFormatError, match=r"12_x\.jpg is not a readable JPEG/PNG"):
        tinyface.evaluate(tiny_recognizer(), items)
