"""Bad inputs to `synthface eval` and its `.bin` reader (issue #22, classes 3, 4 and 6), and `eval make-bin`
(class 12) on real photos: each refusal is one paragraph with its exit code, and nothing is written."""

from __future__ import annotations

import errno
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import FileFormatError, InvalidInputError, OutputPathError
from synthface.fr.backbones import iresnet
from synthface.fr.benchmarks.bin import BIN_MAX_PIXELS, read_bin, write_bin
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.helpers.faces import astronaut, dlib_analyzer, t1_faces, t1_image

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` RGB pixels and holds one compressed row: what a decoder
    allocates for is the declared size (30000 x 30000 x 3 = 2.7 GB), whatever follows."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width))) + chunk(b"IEND", b"")


def toy_images(n_pairs: int = 10, size: int = 32) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2 * n_pairs)]


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = iresnet("r18", widths=(8, 8, 16, 16), num_features=16, input_size=32).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def bins(tmp_path) -> Path:
    folder = tmp_path / "bins"
    folder.mkdir()
    write_bin(folder / "lfw.bin", toy_images(), [bool(i % 2) for i in range(10)])
    return folder


def raw_pack(path: Path, images, issame) -> None:
    with open(path, "wb") as handle:
        pickle.dump((images, issame), handle, protocol=2)


# ------------------------------------------------------------------ class 6: pair labels that are not booleans


@pytest.mark.parametrize(
    "issame, needle",
    [
        ([0, 1] * 5, "pair label 0 is 0 (int)"),
        ([True] * 9 + [2], "pair label 9 is 2 (int)"),
        (["yes", "no"] * 5, "pair label 0 is 'yes' (str)"),
        ([True] * 5 + [0.5] * 5, "pair label 5 is 0.5 (float)"),
        ([True] * 9 + [None], "pair label 9 is None"),
        (np.ones(10, np.int64), "pair label 0 is 1 (int)"),
        ("TrueFalse", "are a str, not a list of booleans"),
    ],
    ids=["0/1", "a 2", "strings", "floats", "None", "int array", "a string"],
)
def test_pair_labels_must_be_booleans(tmp_path, capsys, model_pt, issame, needle):
    (tmp_path / "bins").mkdir()
    raw_pack(tmp_path / "bins" / "lfw.bin", toy_images(), issame)
    with pytest.raises(FileFormatError, match="make-bin"):
        read_bin(tmp_path / "bins" / "lfw.bin")
    out = tmp_path / "results.json"
    result = run_cli_inprocess(capsys, "eval", model_pt, "--bins", tmp_path / "bins", "--out", out)
    assert_clean_refusal(result, FileFormatError.exit_code, needle, "lfw.bin", "true (same person) or false"
                         if "pair label" in needle else "not a list of booleans")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bins"]  # no results.json, no temporary file


def test_numpy_boolean_labels_are_accepted(tmp_path):
    raw_pack(tmp_path / "np.bin", toy_images(), np.array([True, False] * 5))
    raw_pack(tmp_path / "scalars.bin", toy_images(), [np.bool_(i % 2) for i in range(10)])
    for name in ("np", "scalars"):
        assert read_bin(tmp_path / f"{name}.bin").issame.dtype == bool


# ------------------------------------------------------------------ classes 3 and 6: decompression bombs


def test_a_30000_pixel_square_image_in_a_pack_is_refused_from_its_header(tmp_path, capsys, model_pt, monkeypatch):
    import cv2

    images = toy_images()
    images[3] = png_header_only(30000, 30000)
    (tmp_path / "bins").mkdir()
    raw_pack(tmp_path / "bins" / "lfw.bin", images, [True, False] * 5)
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: decoded.append(len(buf)) or real(buf, flags))
    with pytest.raises(FileFormatError, match=r"lfw\.bin image 3 \(pair 1\) declares more than"):
        read_bin(tmp_path / "bins" / "lfw.bin")
    result = run_cli_inprocess(capsys, "eval", model_pt, "--bins", tmp_path / "bins", "--out", tmp_path / "r.json")
    assert_clean_refusal(result, FileFormatError.exit_code, "image 3 (pair 1)", "900000000 pixels",
                         f"{BIN_MAX_PIXELS:,}", "decompression bomb", "make-bin")
    assert decoded == []  # refused before any image was decoded: no 2.7 GB allocation
    assert not (tmp_path / "r.json").exists()


def test_an_image_over_the_pack_limit_but_under_pils_is_refused_with_its_size(tmp_path):
    images = toy_images()
    images[12] = png_header_only(5000, 4000)
    raw_pack(tmp_path / "lfw.bin", images, [True, False] * 5)
    with pytest.raises(FileFormatError, match=r"image 12 \(pair 6\) declares 5000 x 4000 = 20,000,000 pixels"):
        read_bin(tmp_path / "lfw.bin")


def test_a_pack_image_that_is_not_an_image_names_its_record(tmp_path):
    images = toy_images()
    images[7] = b"not an image at all"
    raw_pack(tmp_path / "lfw.bin", images, [True, False] * 5)
    with pytest.raises(FileFormatError, match=r"image 7 \(pair 3\) is not a readable JPEG/PNG"):
        read_bin(tmp_path / "lfw.bin")


def test_a_large_but_plausible_crop_is_still_read(tmp_path):
    images = toy_images()
    images[0] = png(np.zeros((250, 250, 3), np.uint8))  # LFW's original 250 x 250 photos
    raw_pack(tmp_path / "lfw.bin", images, [True, False] * 5)
    assert read_bin(tmp_path / "lfw.bin").decode(0, 2, 32).shape == (2, 32, 32, 3)


# ------------------------------------------------------------------ class 6: models that cannot be evaluated


def tiny_onnx(path: Path, weight: float) -> Path:
    """A (N, 3, 8, 8) -> (N, 4) recogniser: Flatten then Gemm with every weight `weight`."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((192, 4), weight, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])], "rec",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def nan_state(model_pt: Path, value: float) -> dict:
    state = torch.load(model_pt, weights_only=True)
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"].clone()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = value
    return state


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda d, m: torch.save(nan_state(m, float("nan")), d / "nan.pt") or d / "nan.pt",
         ["non-finite weights", "layer2.0.conv1.weight", "diverged"]),
        (lambda d, m: torch.save(nan_state(m, float("inf")), d / "inf.pt") or d / "inf.pt",
         ["non-finite weights", "layer2.0.conv1.weight"]),
        (lambda d, m: tiny_onnx(d / "nan.onnx", float("nan")), ["non-finite weights", "in w"]),
        (lambda d, m: tiny_onnx(d / "huge.onnx", 3e38), ["non-finite embedding", "lfw.bin image 0 (pair 0)"]),
        (lambda d, m: (d / "empty.pt").write_bytes(b"") or d / "empty.pt", ["empty.pt is empty (0 bytes)"]),
        (lambda d, m: (d / "empty.onnx").write_bytes(b"") or d / "empty.onnx", ["empty.onnx is empty (0 bytes)"]),
        (lambda d, m: (d / "proto.onnx").write_bytes(b"\x08\x07") and d / "proto.onnx",
         ["proto.onnx is not a usable onnx model", "no nodes"]),
    ],
    ids=["nan .pt", "inf .pt", "nan .onnx", "overflowing .onnx", "empty .pt", "empty .onnx", "empty onnx proto"],
)
def test_models_that_cannot_give_embeddings_are_refused(tmp_path, capsys, bins, model_pt, make, needles):
    model = make(tmp_path, model_pt)
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "eval", model, "--bins", bins, "--out", tmp_path / "results.json")
    assert_clean_refusal(result, FileFormatError.exit_code, *needles)
    assert snapshot(tmp_path) == before


def test_a_finite_onnx_recogniser_is_evaluated(tmp_path, capsys, bins):
    result = run_cli_inprocess(capsys, "eval", tiny_onnx(tmp_path / "ok.onnx", 0.01), "--bins", bins,
                               "--out", tmp_path / "results.json")
    assert result.returncode == 0, result.output
    assert (tmp_path / "results.json").read_text().startswith("{")


# ------------------------------------------------------------------ class 4: the results file


def _fail(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    "out, inject, needles, before_work",
    [
        (lambda t: t / ("r" * 300 + ".json"), None, ["too long for the file system"], True),
        (lambda t: t / "file.txt" / "results.json", None, ["file.txt is a file, not a folder"], True),
        (lambda t: t / "results.json", ("tempfile.mkstemp", errno.EROFS), ["read-only file system", "writable disk"], True),
        (lambda t: t / "results.json", ("tempfile.mkstemp", errno.ENOSPC), ["no space left", "disk is full"], True),
        (lambda t: t / "results.json", ("os.fsync", errno.ENOSPC), ["no space left", "disk is full"], False),
        (lambda t: t / "results.json", ("os.replace", errno.EROFS), ["read-only file system"], False),
    ],
    ids=["ENAMETOOLONG", "ENOTDIR", "EROFS at start", "ENOSPC at start", "ENOSPC mid-run", "EROFS mid-run"],
)
def test_eval_output_errors_are_one_message_and_leave_nothing(tmp_path, capsys, bins, model_pt, monkeypatch, out,
                                                              inject, needles, before_work):
    import synthface.fr.benchmarks as benchmarks
    import synthface.io as sio

    (tmp_path / "file.txt").write_text("the user's file")
    loaded = []
    real_load = benchmarks.load_recognizer
    monkeypatch.setattr(benchmarks, "load_recognizer", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    if inject is not None:
        module, name = inject[0].split(".")
        monkeypatch.setattr(getattr(sio, module), name, _fail(inject[1]))
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "eval", model_pt, "--bins", bins, "--out", out(tmp_path))
    monkeypatch.undo()
    assert_clean_refusal(result, OutputPathError.exit_code, *needles)
    assert result.output.count("error:") == 1
    assert snapshot(tmp_path) == before  # no results.json, no temporary file
    assert (loaded == []) == before_work  # refused before the model was loaded when it can be


# ------------------------------------------------------------------ class 12: eval make-bin on real photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Seven identity folders of real photos: each of t1.jpg's six people cropped, and mirrored at 1.5x;
    scikit-image's astronaut and her mirror; and a photo without a face (skipped)."""
    root = tmp_path_factory.mktemp("photos")
    image = Image.fromarray(t1_image())
    for k, face in enumerate(t1_faces()):
        x1, y1, x2, y2 = face.bbox
        w, h = x2 - x1, y2 - y1
        crop = image.crop((max(0, int(x1 - 0.6 * w)), max(0, int(y1 - 0.6 * h)), min(image.width, int(x2 + 0.6 * w)),
                           min(image.height, int(y2 + 0.6 * h))))
        (root / f"person{k}").mkdir()
        crop.save(root / f"person{k}" / "1.png")
        crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((crop.width * 3 // 2, crop.height * 3 // 2)).save(
            root / f"person{k}" / "2.jpg", quality=95)
    (root / "astronaut").mkdir()
    astro = Image.fromarray(astronaut())
    astro.save(root / "astronaut" / "1.png")
    astro.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "astronaut" / "2.png")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(root / "astronaut" / "3-no-face.png")
    (root / "astronaut" / "notes.txt").write_text("not a photo")
    return root


def test_make_bin_round_trip_on_real_photos(photos, tmp_path):
    from synthface.faces import load_image
    from synthface.faces.align import norm_crop
    from synthface.fr.make_bin import make_bin

    made = make_bin(photos, tmp_path / "mine.bin", analyzer=dlib_analyzer(), fmt="png", seed=3)
    assert made.skipped == (("astronaut/3-no-face.png", "no face found"),)
    assert made.genuine == made.impostor == 7  # every folder's one genuine pair, as many impostors
    pack = read_bin(tmp_path / "mine.bin")
    assert pack.issame.tolist() == [same for _, _, same in made.pairs] == [True, False] * 7
    for a, b, same in made.pairs:
        assert (Path(a).parent == Path(b).parent) == same
    crops = {}
    for i, photo in enumerate(p for a, b, _ in made.pairs for p in (a, b)):
        if photo not in crops:
            image = load_image(photos / photo)
            crops[photo] = norm_crop(image, dlib_analyzer().detect([image])[0][0].kps)
        assert np.array_equal(pack.decode(i, i + 1, 112)[0], crops[photo]), photo  # the photo's aligned face
    again = make_bin(photos, tmp_path / "again.bin", analyzer=dlib_analyzer(), fmt="png", seed=3)
    assert again.pairs == made.pairs and (tmp_path / "again.bin").read_bytes() == (tmp_path / "mine.bin").read_bytes()
    other = make_bin(photos, tmp_path / "other.bin", analyzer=dlib_analyzer(), fmt="png", seed=4)
    assert other.pairs != made.pairs and sorted(p for p in other.pairs if p[2]) == sorted(p for p in made.pairs if p[2])


def test_make_bin_then_eval_on_the_command_line(photos, tmp_path, capsys, model_pt):
    out = tmp_path / "bins" / "mine.bin"
    (tmp_path / "bins").mkdir()
    made = run_cli_inprocess(capsys, "eval", "make-bin", photos, "--out", out, "--pairs", "5")
    assert made.returncode == 0, made.output
    text = " ".join(made.output.split())
    assert "5 genuine and 5 impostor pairs" in text and "3-no-face.png: no face found" in text
    assert read_bin(out).issame.tolist() == [True, False] * 5  # JPEG crops, as insightface's packs
    scored = run_cli_inprocess(capsys, "eval", model_pt, "--bins", tmp_path / "bins", "--out", tmp_path / "r.json")
    assert scored.returncode == 0 and "mine" in scored.output, scored.output
    before = out.read_bytes()
    refused = run_cli_inprocess(capsys, "eval", "make-bin", photos, "--out", out)
    assert_clean_refusal(refused, OutputPathError.exit_code, "already exists", "--overwrite")
    assert out.read_bytes() == before


def test_make_bin_refusals_name_what_is_missing(photos, tmp_path, capsys):
    one = tmp_path / "one"
    (one / "alice").mkdir(parents=True)
    (one / "alice" / "1.png").write_bytes((photos / "astronaut" / "1.png").read_bytes())
    few = tmp_path / "few"
    for name in ("person0", "person1", "astronaut"):
        (few / name).mkdir(parents=True)
        for photo in (photos / name).glob("*.png"):
            (few / name / photo.name).write_bytes(photo.read_bytes())
    cases = [
        ((tmp_path / "nowhere",), InvalidInputError.exit_code, ["nowhere is not a folder", "identity subfolders"]),
        ((one,), InvalidInputError.exit_code, ["1 identity subfolder", "at least two people"]),
        ((few,), InvalidInputError.exit_code, ["1 genuine and 1 impostor pairs", "at least 10 pairs", "add photos"]),
        ((photos, "--format", "gif"), InvalidInputError.exit_code, ["--format", "jpg, png"]),
        ((photos, "--backend", "nope"), InvalidInputError.exit_code, ["unknown face backend 'nope'"]),
        ((photos, "--out", tmp_path / "file.txt" / "x.bin"), OutputPathError.exit_code, ["file.txt is a file, not a folder"]),
        ((photos, "--out", tmp_path / ("b" * 300 + ".bin")), OutputPathError.exit_code, ["too long for the file system"]),
    ]
    (tmp_path / "file.txt").write_text("the user's file")
    for args, code, needles in cases:
        before = snapshot(tmp_path)
        result = run_cli_inprocess(capsys, "eval", "make-bin", "--out", tmp_path / "x.bin", *args)
        assert_clean_refusal(result, code, *needles)
        assert snapshot(tmp_path) == before, args
