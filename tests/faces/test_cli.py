"""`synthface embed` and `synthface models` run as a user runs them; bad inputs give typed errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from synthface import weights
from synthface.errors import ImageError, ModelNotFoundError, NoFaceError
from synthface.faces import DLIB_SAME_PERSON_COS, get_analyzer, load_image
from tests.cli_helpers import run_cli
from tests.helpers.faces import HANKS, T1, astronaut


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys, monkeypatch):
    """The real `synthface` entry point (error mapping and exit codes included), run in-process:
    a subprocess start costs seconds on this machine, so only one test below uses one."""
    from synthface.cli import main

    def run(*args):
        monkeypatch.setattr("sys.argv", ["synthface", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def read(path):
    with safe_open(str(path), "numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_embed_all_faces_and_largest(tmp_path, cli):
    out = tmp_path / "t1.safetensors"
    result = run_cli("embed", T1, "--all-faces", "--out", out)
    assert result.returncode == 0, result.stderr
    tensors, meta = read(out)
    assert tensors["embeddings"].shape == (6, 128) and tensors["kps"].shape == (6, 5, 2)
    assert tensors["bboxes"].shape == (6, 4) and list(tensors["image_index"]) == [0] * 6
    assert json.loads(meta["source"]) == [str(T1)] and meta["backend"] == "dlib"
    one = tmp_path / "one.safetensors"
    assert cli("embed", T1, "--out", one).returncode == 0
    largest, _ = read(one)
    np.testing.assert_allclose(largest["embeddings"], tensors["embeddings"][:1], atol=1e-6)


def test_embed_mean_of_one_persons_photos(tmp_path, cli):
    photo = astronaut()
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(photo[:, ::-1]).save(tmp_path / "b.png")
    Image.fromarray((photo * 0.6).astype(np.uint8)).save(tmp_path / "c.webp")
    out = tmp_path / "id.safetensors"
    result = cli("embed", tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.webp", "--mean", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "cosine of each photo to the mean" in result.stdout
    tensors, meta = read(out)
    assert tensors["embeddings"].shape == (1, 128) and tensors["face_embeddings"].shape == (3, 128)
    assert abs(np.linalg.norm(tensors["embeddings"]) - 1) < 1e-5
    assert (tensors["face_embeddings"] @ tensors["embeddings"][0]).min() > DLIB_SAME_PERSON_COS
    assert meta["mean"] == "true"


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 20000 x 20000 pixels (400 M): must be refused before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.jpg", None, "no such file"),
        ("empty.jpg", b"", "empty"),
        ("text.jpg", b"this is not an image at all", "not a recognised image"),
        ("truncated.jpg", "truncated", "damaged or truncated"),
        ("bomb.png", "bomb", "decompression bomb"),
    ],
)
def test_bad_files_are_typed_image_errors(tmp_path, cli, name, content, match):
    path = tmp_path / name
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(astronaut()).save(buf, format="JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif content == "bomb":
        path.write_bytes(bomb_png())
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=match):
        load_image(path)
    if name not in ("truncated.jpg", "bomb.png"):
        return  # the CLI path is the same for every ImageError; two subprocess runs show it
    result = cli("embed", path, "--out", tmp_path / "o.safetensors")
    assert result.returncode == ImageError.exit_code, result.stderr
    assert "Traceback" not in result.stderr and match.split()[0] in result.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_arrays_are_typed_image_errors():
    analyzer = get_analyzer("dlib")
    for bad in (np.zeros((0, 5, 3), np.uint8), np.zeros((5, 5, 2), np.uint8), np.zeros((4, 4, 3), np.int32),
                np.full((4, 4, 3), 7.0), "not an array"):
        with pytest.raises(ImageError):
            analyzer.detect([bad])


def test_odd_modes_still_find_the_face(tmp_path):
    photo = astronaut()
    gray = photo.mean(2).astype(np.uint8)
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    analyzer = get_analyzer("dlib")
    ref = analyzer.analyze([photo])[0][0].embedding
    for name in ("rgba.png", "gray16.png"):
        face = analyzer.analyze([load_image(tmp_path / name)])[0][0]
        assert float(face.embedding @ ref) > DLIB_SAME_PERSON_COS


def test_no_face_is_a_typed_error_with_exit_code(tmp_path, cli):
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    assert get_analyzer("dlib").analyze([load_image(tmp_path / "wall.png")]) == [[]]
    result = cli("embed", tmp_path / "wall.png", HANKS, "--out", tmp_path / "o.safetensors")
    assert result.returncode == NoFaceError.exit_code and "No face found" in result.stderr
    skipped = cli("embed", tmp_path / "wall.png", HANKS, "--skip-no-face", "--out", tmp_path / "o.safetensors")
    assert skipped.returncode == 0 and "skipped" in skipped.stdout
    assert read(tmp_path / "o.safetensors")[0]["embeddings"].shape == (1, 128)


def test_models_list_verify_and_missing_model(tmp_path, cli, monkeypatch):
    listing = cli("models", "list")
    assert listing.returncode == 0 and "antelopev2" in listing.stdout and "non-commercial" in listing.stdout
    verify = cli("models", "verify", "dlib")
    assert verify.returncode == 0 and verify.stdout.count(" ok ") >= 3, verify.stdout
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="synthface models download antelopev2"):
        weights.find("antelopev2")
    result = cli("embed", HANKS, "--backend", "insightface", "--out", tmp_path / "o.safetensors")
    assert result.returncode == ModelNotFoundError.exit_code and "models download antelopev2" in result.stderr


def test_weights_lookup_in_hub_cache_and_packs(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--FoivosPar--Arc2Face" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "arcface.onnx").write_bytes(b"onnx")
    (cache / "models--FoivosPar--Arc2Face" / "refs").mkdir()
    (cache / "models--FoivosPar--Arc2Face" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert weights.find("arc2face-arcface") == snap / "arcface.onnx"
    checks = weights.verify("arc2face-arcface")  # four bytes are found, but are no ONNX graph
    assert not checks[0].ok and checks[0].size == 4 and checks[0].problem.startswith("UNREADABLE onnx")
    with pytest.raises(ModelNotFoundError, match="models download arc2face"):
        weights.find("arc2face")  # same repo, UNet files not cached
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    pack = tmp_path / "models" / "antelopev2"
    (pack / "antelopev2").mkdir(parents=True)
    for f in weights.spec("antelopev2").files:
        (pack / "antelopev2" / f).write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="nested.*mv "):
        weights.find("antelopev2")
    import shutil

    shutil.rmtree(pack / "antelopev2")
    for f in weights.spec("antelopev2").files[:2]:
        (pack / f).write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="incomplete: missing 1k3d68.onnx"):
        weights.find("antelopev2")
    for f in weights.spec("antelopev2").files:
        (pack / f).write_bytes(b"x")
    assert weights.find("antelopev2") == pack
    with pytest.raises(ModelNotFoundError, match="Unknown model"):
        weights.find("nope")
