"""fr.benchmarks.rfw on a tiny RFW release built from real photos with true landmarks: per-race accuracy, mean,
sample std and trade-off equal an independent re-computation (insightface-style skimage alignment, float64
net, a loop over insightface's 10 folds), the .bin route equals the folder route, and each mistake (BGR, no
flip, population std) would be caught; errors name the file and line."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr.benchmarks import rfw
from synthface.fr.benchmarks.embeddings import EmbeddingCache
from tests.helpers.rfw_layout import GROUPS, build_bins, build_rfw, read_lmk, read_pairs
from tests.helpers.tinyface_layout import tiny_recognizer

ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_rfw(tmp_path_factory.mktemp("rfw"))


@pytest.fixture(scope="module")
def bins(release, tmp_path_factory) -> Path:
    return build_bins(release, tmp_path_factory.mktemp("rfw_bins"))


# ------------------------------------------------------------------ the reference, written independently


def ten_fold(dist: np.ndarray, same: np.ndarray) -> float:
    """insightface's calculate_roc accuracy, as a loop: unshuffled KFold(10), thresholds 0..3.99 step 0.01,
    on each fold the first best threshold on the other nine folds, mean of the fold accuracies."""
    thresholds = np.arange(0, 4, 0.01)
    n = len(dist)
    sizes = [n // 10 + (1 if k < n % 10 else 0) for k in range(10)]
    starts = np.cumsum([0, *sizes])
    accs = []
    for k in range(10):
        test = np.zeros(n, bool)
        test[starts[k] : starts[k + 1]] = True
        train_acc = np.mean((dist[~test][None, :] < thresholds[:, None]) == same[~test][None, :], axis=1)
        best = thresholds[int(np.argmax(train_acc))]  # argmax: the first of equally good thresholds
        accs.append(np.mean((dist[test] < best) == same[test]))
    return float(np.mean(accs))


_PHOTOS: dict[Path, np.ndarray] = {}  # decoded once per test session (BGR, as cv2 reads them)


def distances(release: Path, rec, *, rgb: bool = True, flip: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per race (squared distances, same): skimage similarity to the ArcFace template (insightface's norm_crop),
    cv2 warp, float64 net, flip sum, L2."""
    import cv2
    from skimage.transform import SimilarityTransform

    w1, w2 = (w.astype(np.float64) for w in rec.weights)

    def net(img):
        x = (img.astype(np.float64) / 255.0 - 0.5) / 0.5
        return np.tanh(x.reshape(16, 7, 16, 7, 3).mean(axis=(1, 3)).reshape(-1) @ w1) @ w2

    def feature(path: Path, kps: np.ndarray) -> np.ndarray:
        img = _PHOTOS.get(path)
        if img is None:
            img = _PHOTOS[path] = cv2.imread(str(path))
        img = np.ascontiguousarray(img[:, :, ::-1] if rgb else img)
        transform = SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26 renames estimate; same fit
            transform.estimate(kps.astype(np.float32), ARCFACE)
        crop = cv2.warpAffine(img, transform.params[:2], (112, 112), borderValue=0)
        f = net(crop) + (net(crop[:, ::-1]) if flip else 0)
        return f / np.linalg.norm(f)

    out = {}
    for race in GROUPS:
        lmk, pairs = read_lmk(release, race), read_pairs(release, race)
        features = {p: feature(p, lmk[p.stem]) for p in dict.fromkeys(p for a, b, _ in pairs for p in (a, b))}
        out[race] = (np.array([np.sum((features[a] - features[b]) ** 2) for a, b, _ in pairs]), np.array([s for *_, s in pairs]))
    return out


def reference(release: Path, rec, *, noise: float = 0.0, seed: int = 0, **how) -> dict[str, float]:
    """Per-race accuracy; `noise` adds uniform +-noise to every distance (a robustness probe)."""
    rng = np.random.default_rng(seed)
    return {race: ten_fold(d + rng.uniform(-noise, noise, len(d)), same) for race, (d, same) in distances(release, rec, **how).items()}


# ------------------------------------------------------------------ the protocol


def test_groups_mean_std_and_tradeoff_equal_the_reference(release):
    rec = tiny_recognizer()
    section = rfw.evaluate(rec, rfw.find(release))
    dist = distances(release, rec)
    want = {race: ten_fold(d, same) for race, (d, same) in dist.items()}
    rng = np.random.default_rng(0)
    for _ in range(3):  # no race's accuracy moves under 1e-4 distance noise: the exact comparison is meaningful
        assert {race: ten_fold(d + rng.uniform(-1e-4, 1e-4, len(d)), same) for race, (d, same) in dist.items()} == want
    assert list(section["groups"]) == list(GROUPS)
    for race in GROUPS:
        assert section["groups"][race]["accuracy"] == pytest.approx(want[race], abs=1e-6)
        assert section["groups"][race]["pairs"] == 40
    acc = np.array([want[r] for r in GROUPS])
    assert section["mean"] == pytest.approx(acc.mean(), abs=1e-6)
    assert section["std"] == pytest.approx(np.sqrt(np.sum((acc - acc.mean()) ** 2) / 3), abs=1e-6)  # sample std
    assert section["std_population"] == pytest.approx(np.sqrt(np.mean((acc - acc.mean()) ** 2)), abs=1e-6)
    assert section["tradeoff"] == pytest.approx(acc.mean() - section["std"], abs=1e-6)
    assert "ddof=1" in section["std_convention"]
    # the traps: population std, BGR and no flip each move a number by far more than 1e-6
    assert abs(section["std"] - section["std_population"]) > 1e-3
    for trap in ({"rgb": False}, {"flip": False}):
        wrong = reference(release, rec, **trap)
        assert max(abs(wrong[r] - want[r]) for r in GROUPS) >= 0.025, trap  # at least one pair of 40
    rows = dict(rfw.rows(section))
    assert rows["trade-off"] == f"{100 * section['tradeoff']:.2f} %" and set(GROUPS) <= set(rows)


def test_the_bin_route_equals_the_folder_route(release, bins):
    rec = tiny_recognizer(seed=1)
    folder = rfw.evaluate(rec, rfw.find(release / "test"))  # the test/ folder itself is accepted too
    packs = rfw.evaluate(rec, rfw.find(bins))
    assert list(packs["groups"]) == list(GROUPS)
    for race in GROUPS:
        assert packs["groups"][race]["accuracy"] == folder["groups"][race]["accuracy"]
    assert (packs["mean"], packs["std"], packs["tradeoff"]) == (folder["mean"], folder["std"], folder["tradeoff"])
    unflipped = rfw.evaluate(rec, rfw.find(release), flip=False)
    want = reference(release, rec, flip=False)
    assert all(unflipped["groups"][r]["accuracy"] == pytest.approx(want[r], abs=1e-6) for r in GROUPS)


def test_sets_pick_races_and_a_rerun_embeds_nothing(release, tmp_path):
    calls, seen = [], []
    rec = tiny_recognizer()
    forward = rec.forward
    rec.forward = lambda crops: calls.append(len(crops)) or forward(crops)
    items = rfw.find(release, sets=["asian", "Indian"])
    first = rfw.evaluate(rec, items, cache=EmbeddingCache(tmp_path, benchmark="rfw", model_key="m"), progress=seen.append)
    distinct = {p for race in ("Asian", "Indian") for a, b, _ in read_pairs(release, race) for p in (a, b)}
    assert list(first["groups"]) == ["Asian", "Indian"] and sum(seen) == rfw.total_images(items) == len(distinct)
    assert sum(calls) == 2 * len(distinct)  # each distinct image once (and its mirror), however many pairs name it
    calls.clear()
    again = rfw.evaluate(rec, items, cache=EmbeddingCache(tmp_path, benchmark="rfw", model_key="m"))
    assert calls == [] and again["groups"] == first["groups"]
    with pytest.raises(InvalidInputError, match="no group Latino"):
        rfw.find(release, sets=["Latino"])


# ------------------------------------------------------------------ errors


def _copy(release: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(release, tmp_path / "RFW"))


def test_malformed_pair_and_landmark_lines_name_file_and_line(release, tmp_path):
    root = _copy(release, tmp_path)
    pairs = root / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    lines = pairs.read_text().splitlines()
    pairs.write_text("\n".join([*lines[:4], "m.0as1x\tone\t2", *lines[4:]]) + "\n")
    group = rfw.find(root)[1]
    with pytest.raises(FileFormatError, match=r"Asian_pairs\.txt, line 5: expected 'id n1 n2'.*'m\.0as1x one 2'"):
        rfw.load(group)
    pairs.write_text("\n".join(lines) + "\n")
    lmk = root / "test" / "txts" / "Asian" / "Asian_lmk.txt"
    lmk_lines = lmk.read_text().splitlines()
    lmk.write_text("\n".join([*lmk_lines[:2], lmk_lines[2].rsplit("\t", 1)[0], *lmk_lines[3:]]) + "\n")
    with pytest.raises(FileFormatError, match=r"Asian_lmk\.txt, line 3: expected an image path, a label and five.*got 11"):
        rfw.load(group)
    lmk.write_text("\n".join([lmk_lines[0], *lmk_lines[2:]]) + "\n")  # the second image's line is gone
    first = Path(lmk_lines[1].split("\t")[0]).stem
    with pytest.raises(FileFormatError, match=rf"Asian_lmk\.txt has no landmarks for {first} \(named by .*Asian_pairs\.txt, line \d+\)"):
        rfw.load(group)


def test_missing_images_groups_and_packs_are_named(release, bins, tmp_path):
    root = _copy(release, tmp_path)
    victim = next((root / "test" / "data" / "Caucasian").rglob("*_0002.jpg"))
    victim.unlink()
    with pytest.raises(FileFormatError, match=rf"Caucasian_pairs\.txt, line \d+ names .*{victim.name}, which does not exist"):
        rfw.evaluate(tiny_recognizer(), rfw.find(root))
    shutil.rmtree(root / "test" / "txts" / "Indian")
    with pytest.raises(FileFormatError, match=r"incomplete: .*Indian_pairs\.txt, .*Indian_lmk\.txt missing"):
        rfw.find(root)
    packs = Path(shutil.copytree(bins, tmp_path / "packs"))
    (packs / "Asian_test.bin").unlink()
    with pytest.raises(FileFormatError, match=r"lacks Asian_test\.bin"):
        rfw.find(packs)
    assert [g.name for g in rfw.find(packs, sets=["African"])] == ["African"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="neither test/data/ and test/txts/ nor <Race>_test.bin"):
        rfw.find(tmp_path / "empty")


def test_packs_passed_directly_keep_their_race_names(bins):
    from synthface.fr.benchmarks.bin import read_bin

    section = rfw.evaluate(tiny_recognizer(), [read_bin(bins / "Asian_test.bin"), read_bin(bins / "Indian_test.bin")])
    assert list(section["groups"]) == ["Asian", "Indian"]
