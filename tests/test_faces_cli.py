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
from tests.faces_fixtures import HANKS, T1, astronaut


def read(path):
    with safe_open(str(path), "numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_embed_all_faces_and_largest(tmp_path):
    out = tmp_path / "t1.safetensors"
    result = run_cli("embed", T1, "--all-faces", "--out", out)
    assert result.returncode == 0, result.stderr
    tensors, meta = read(out)
    assert tensors["embeddings"].shape == (6, 128) and tensors["kps"].shape == (6, 5, 2)
    assert tensors["bboxes"].shape == (6, 4) and list(tensors["image_index"]) == [0] * 6
    assert json.loads(meta["source"]) == [str(T1)] and meta["backend"] == "dlib"
    one = tmp_path / "one.safetensors"
    assert run_cli("embed", T1, "--out", one).returncode == 0
    largest, _ = read(one)
    np.testing.assert_allclose(largest["embeddings"], tensors["embeddings"][:1], atol=1e-6)


def test_embed_mean_of_one_persons_photos(tmp_path):
    photo = astronaut()
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(photo[:, ::-1]).save(tmp_path / "b.png")
    Image.fromarray((photo * 0.6).astype(np.uint8)).save(tmp_path / "c.webp")
    out = tmp_path / "id.safetensors"
    result = run_cli("embed", tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.webp", "--mean", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "cosine of each photo to the mean" in result.stdout
    tensors, meta = read(out)
    assert tensors["embeddings"].shape == (1, 128) and tensors["face_embeddings"].shape == (3, 128)
    assert abs(np.linalg.norm(tensors["embeddings"]) - 1) < 1e-5
    assert (tensors["face_embeddings"] @ tensors["embeddings"][0]).min() > DLIB_SAME_PERSON_COS
    assert meta["mean"] == "true"


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 20000 x 20000 pixels (400 M): must be refused before decoding."""
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


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
def test_bad_files_are_typed_image_errors(tmp_path, name, content, match):
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
    result = run_cli("embed", path, "--out", tmp_path / "o.safetensors")
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


def test_no_face_is_a_typed_error_with_exit_code(tmp_path):
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    assert get_analyzer("dlib").analyze([load_image(tmp_path / "wall.png")]) == [[]]
    result = run_cli("embed", tmp_path / "wall.png", HANKS, "--out", tmp_path / "o.safetensors")
    assert result.returncode == NoFaceError.exit_code and "No face found" in result.stderr
    skipped = run_cli("embed", tmp_path / "wall.png", HANKS, "--skip-no-face", "--out", tmp_path / "o.safetensors")
    assert skipped.returncode == 0 and "skipped" in skipped.stdout
    assert read(tmp_path / "o.safetensors")[0]["embeddings"].shape == (1, 128)


def test_models_list_verify_and_missing_model(tmp_path, monkeypatch):
    listing = run_cli("models", "list")
    assert listing.returncode == 0 and "antelopev2" in listing.stdout and "non-commercial" in listing.stdout
    verify = run_cli("models", "verify", "dlib")
    assert verify.returncode == 0 and verify.stdout.count(" ok ") >= 3, verify.stdout
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="synthface models download antelopev2"):
        weights.find("antelopev2")
    cli = run_cli("embed", HANKS, "--backend", "insightface", "--out", tmp_path / "o.safetensors")
    assert cli.returncode == ModelNotFoundError.exit_code and "models download antelopev2" in cli.stderr


def test_weights_lookup_in_hub_cache_and_packs(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--FoivosPar--Arc2Face" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "arcface.onnx").write_bytes(b"onnx")
    (cache / "models--FoivosPar--Arc2Face" / "refs").mkdir()
    (cache / "models--FoivosPar--Arc2Face" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert weights.find("arc2face-arcface") == snap / "arcface.onnx"
    checks = weights.verify("arc2face-arcface")
    assert checks[0].ok and checks[0].size == 4
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
