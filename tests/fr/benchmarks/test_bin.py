"""Verification: the 10-fold protocol against a brute-force loop, hand cases, TAR@FAR, .bin packs, recognisers."""

from __future__ import annotations

import io
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import FileFormatError, ModelNotFoundError
from synthface.fr.backbones import iresnet
from synthface.fr.benchmarks.bin import (
    THRESHOLDS,
    BinPack,
    decode_image,
    embed_pack,
    evaluate,
    find_bins,
    pair_distances,
    read_bin,
    tar_at_far,
    ten_fold_accuracy,
    threshold_at_far,
    write_bin,
)
from synthface.fr.benchmarks.recognizers import Recognizer, load_recognizer, torch_recognizer
from synthface.fr.benchmarks.registry import write_results


def brute_force_accuracy(dist, issame):
    """insightface's calculate_roc accuracy written as plain loops: contiguous folds, first best threshold."""
    n = len(dist)
    folds, start = [], 0
    for k in range(10):
        size = n // 10 + (1 if k < n % 10 else 0)
        folds.append(list(range(start, start + size)))
        start += size

    def accuracy(t, idx):
        return sum(bool(dist[i] < t) == bool(issame[i]) for i in idx) / len(idx)

    per_fold, chosen = [], []
    for test in folds:
        train = [i for i in range(n) if i not in set(test)]
        d_train, s_train = dist[train], issame[train]
        accs = [np.mean((d_train < t) == s_train) for t in THRESHOLDS]
        best = 0
        for j, a in enumerate(accs):
            if a > accs[best]:
                best = j
        chosen.append(THRESHOLDS[best])
        per_fold.append(accuracy(THRESHOLDS[best], test))
    return float(np.mean(per_fold)), float(np.std(per_fold)), chosen


@pytest.mark.parametrize("pairs", [6000, 7000, 6001])
def test_vectorised_accuracy_equals_brute_force_with_ties(pairs):
    rng = np.random.default_rng(pairs)
    issame = rng.random(pairs) < 0.5
    # distances exactly on the threshold grid (strict "<" matters) and coarse enough that many
    # thresholds tie for the best training accuracy
    steps = np.where(issame, rng.integers(60, 140, pairs), rng.integers(100, 200, pairs))
    dist = THRESHOLDS[steps // 5 * 5]
    dist[::7] = rng.uniform(0, 4, len(dist[::7]))
    got = ten_fold_accuracy(dist, issame)
    mean, std, chosen = brute_force_accuracy(dist, issame)
    assert got.mean == mean and got.std == std
    assert list(got.thresholds) == chosen
    assert 0.5 < mean < 1.0


def test_hand_computed_case():
    # pairs 0-4 same (0.105 ... 0.505), 5-9 different (>= 1.005); one pair per fold. Every fold but
    # fold 4 picks the first perfect threshold 0.51; fold 4 trains without 0.505, picks 0.41 and misses it.
    dist = np.array([0.105, 0.205, 0.305, 0.405, 0.505, 1.005, 1.105, 1.205, 1.305, 1.405])
    issame = np.array([True] * 5 + [False] * 5)
    acc = ten_fold_accuracy(dist, issame)
    assert acc.fold_accuracy == (1, 1, 1, 1, 0, 1, 1, 1, 1, 1)
    assert acc.mean == pytest.approx(0.9) and acc.std == pytest.approx(0.3)
    np.testing.assert_allclose(acc.thresholds, [0.51] * 4 + [0.41] + [0.51] * 5)
    # 11 pairs: the first fold holds two
    acc = ten_fold_accuracy(np.r_[dist, 3.0], np.r_[issame, False])
    assert len(acc.fold_accuracy) == 10 and acc.fold_accuracy[0] == 1.0


def test_pair_distances_are_squared_l2_of_consecutive_rows():
    e = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(pair_distances(e), [2.0, 0.0])


def test_threshold_at_far_collapses_equal_fars_without_interp1d():
    far = np.array([0, 0, 0, 0.001, 0.001, 0.002])
    t = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    assert threshold_at_far(far, t, 0.001) == pytest.approx(0.04)
    assert threshold_at_far(far, t, 0.0005) == pytest.approx(0.03)  # halfway from (0, 0.02) to (0.001, 0.04)
    assert threshold_at_far(far, t, 0.01) == 0.0  # never reached: insightface's 0


def test_tar_at_far_on_separable_and_overlapping_scores():
    issame = np.array([True, False] * 50)
    dist = np.where(issame, 0.505, 1.505)
    tar, std, far = tar_at_far(dist, issame)
    assert (tar, std, far) == (1.0, 0.0, 0.0)
    # one impostor at 0.1, in fold 0. Folds 1-9 train with it: FAR is 0 up to t = 0.10, then 1/45, so the
    # threshold for FAR 1e-3 is 0.10 + (1e-3 * 45) * 1.40 = 0.163 and rejects every genuine pair (0.505).
    # Fold 0 trains without it, keeps t = 1.50001, accepts its 5 genuine pairs and the impostor (FAR 1/5).
    dist = dist.copy()
    dist[1] = 0.1
    tar, std, far = tar_at_far(dist, issame)
    assert tar == pytest.approx(0.1) and std == pytest.approx(0.3) and far == pytest.approx(0.02)
    # genuine pairs far away in the training folds: the FAR target is met below them, so TAR drops
    dist = np.where(issame, 2.505, 1.505)
    dist[0] = 0.505
    tar, _, far = tar_at_far(dist, issame)
    assert far == 0.0 and tar == pytest.approx(0.02)


# ----------------------------------------------------------------------------------------------- .bin packs


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def python2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's cPickle.dump((images, issame), f, protocol=2) writes: str as BINSTRING."""
    out = [b"\x80\x02", b"]", b"("]
    for im in images:
        out += [b"T", struct.pack("<i", len(im)), im]
    out += [b"e", b"]", b"("]
    out += [b"\x88" if s else b"\x89" for s in issame]
    out += [b"e", b"\x86", b"."]
    return b"".join(out)


def red_left_half(size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2, 0] = 255
    return img


def test_bin_round_trip_protocol_2_and_python2_bytes(tmp_path):
    rng = np.random.default_rng(0)
    images = [png(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(20)]
    issame = [bool(i % 2) for i in range(10)]
    write_bin(tmp_path / "lfw.bin", images, issame, protocol=2)
    (tmp_path / "old.bin").write_bytes(python2_pickle(images, issame))
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with a Python 2 pack
        pickle.loads((tmp_path / "old.bin").read_bytes())
    for name in ("lfw", "old"):
        pack = read_bin(tmp_path / f"{name}.bin")
        assert pack.name == name and pack.images == images and pack.issame.tolist() == issame and pack.pairs == 10


def test_decode_gives_rgb_and_resizes_when_not_the_model_size():
    img = red_left_half(112)
    out = decode_image(png(img), 112)
    assert np.array_equal(out, img)  # lossless, red stays in channel 0 (cv2 decodes BGR)
    small = decode_image(png(red_left_half(64)), 112)
    assert small.shape == (112, 112, 3)
    assert small[:, :50, 0].min() == 255 and small[:, 62:, 0].max() == 0 and small[..., 1:].max() == 0
    down = decode_image(png(img), 32)
    assert down.shape == (32, 32, 3) and down[:, :16, 0].min() == 255


def test_bad_packs_are_one_paragraph_errors(tmp_path):
    images = [png(red_left_half(16))] * 21
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump((images, [True] * 10), f, protocol=2)
    with pytest.raises(FileFormatError, match="21 images for 10 pair labels"):
        read_bin(tmp_path / "odd.bin")
    good = pickle.dumps((images[:20], [True] * 10), protocol=2)
    (tmp_path / "cut.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(FileFormatError, match="truncated or corrupt"):
        read_bin(tmp_path / "cut.bin")
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(({"x": print}, [True]), protocol=2))
    with pytest.raises(FileFormatError, match="not allowed"):  # no code runs from a pack
        read_bin(tmp_path / "evil.bin")
    with pytest.raises(FileFormatError, match="insightface's training-set archives"):
        find_bins(tmp_path / "nowhere")
    with pytest.raises(FileFormatError, match="no calfw.bin"):
        find_bins(tmp_path, ["calfw"])


# ----------------------------------------------------------------------------------------------- recognisers


def test_embedding_is_the_normalised_flip_sum():
    def forward(crops):  # asymmetric in x, so f(x) != f(flip(x))
        x = crops.astype(np.float32)
        return np.stack([x[:, :, :4].mean((1, 2, 3)), x[:, :, -4:].mean((1, 2, 3)) + 1], axis=1)

    rec = Recognizer(forward, 16, "toy")
    crops = [red_left_half(16), np.full((16, 16, 3), 9, np.uint8)]
    pack = BinPack("toy", [png(c) for c in crops] * 10, np.ones(10, bool))
    emb = embed_pack(rec, pack)
    both = forward(np.stack(crops)) + forward(np.stack(crops)[:, :, ::-1])
    np.testing.assert_allclose(emb[:2], both / np.linalg.norm(both, axis=1, keepdims=True), rtol=1e-6)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return iresnet("r18", widths=(8, 8, 16, 16), num_features=16, input_size=32).eval()


def toy_pack(n_pairs=20, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2 * n_pairs)], [bool(i % 2) for i in range(n_pairs)]


def test_run_folder_bare_pt_and_onnx_give_the_same_results(tmp_path):
    model = tiny_model()
    images, issame = toy_pack()
    write_bin(tmp_path / "lfw.bin", images, issame)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model.pt")
    reference = evaluate(torch_recognizer(model), find_bins(tmp_path))
    assert list(reference["sets"]) == ["lfw"] and reference["average"] == reference["sets"]["lfw"]["accuracy"]
    for source in (run, run / "model.pt"):
        assert evaluate(load_recognizer(source), find_bins(tmp_path))["sets"] == reference["sets"]

    onnx_path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(2, 3, 32, 32), str(onnx_path), input_names=["input.1"], output_names=["emb"],
                          dynamic_axes={"input.1": {0: "b"}, "emb": {0: "b"}}, opset_version=13, dynamo=False)
    onnx_rec = load_recognizer(onnx_path)
    assert onnx_rec.input_size == 32
    pack = read_bin(tmp_path / "lfw.bin")
    np.testing.assert_allclose(embed_pack(onnx_rec, pack), embed_pack(torch_recognizer(model), pack), atol=1e-4)
    out = write_results(reference, tmp_path / "results.json")
    assert out.read_text().startswith("{")


def test_wrong_models_are_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="without model.pt"):
        load_recognizer(tmp_path)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "resnet.pt")
    with pytest.raises(FileFormatError, match="not an IResNet"):
        load_recognizer(tmp_path / "resnet.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FileFormatError, match="cannot be read as a torch state dict"):
        load_recognizer(tmp_path / "junk.pt")
