"""The Gradio demo, launched on the tiny model with the dlib analyser and driven through
gradio_client as a remote user would (Arc2Face's and Vec2Face's random-weight models); plus the
judging logic on real photos and the model choices."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file

from synthface import demo as demo_lib
from synthface import demo_page
from synthface.errors import ModelNotFoundError
from synthface.faces import load_image
from synthface.render import GeneratorFamily, Renderer
from tests.helpers.faces import HANKS, T1, astronaut, dlib_analyzer

CAPTION = re.compile(r"^(no face found|ID cos -?\d\.\d\d → (keep|drop)) · #(\d) seed (\d+) · condition cos (\d\.\d\d)$")
TINY_CONTROLS = {"steps": 2, "guidance": 3.0, "randomize_seed": False, "lcm": False, "model_choice": "tiny"}


def _png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    page = demo_page.build_demo("tiny", "dlib")
    _, url, _ = demo_page.launch_demo(page, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    yield url, client
    client.close()
    demo_page.close_demo(page)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    return {
        "astronaut": _png(folder / "astronaut.png", astronaut()),
        "gray": _png(folder / "gray.png", np.full((240, 320, 3), 128, np.uint8)),
        "text": _write(folder / "notes.jpg", b"this is not a photo"),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip(path: str) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("manifest.json")), {n: zf.read(n) for n in zf.namelist() if n.endswith(".png")}


def test_generate_from_a_photo_returns_the_images_with_cosine_captions(app, photos):
    url, client = app
    assert url.startswith("http://127.0.0.1:"), "the demo must bind to localhost by default"
    gallery, crops, archive, seed, info = client.predict(
        photos=[handle_file(str(photos["astronaut"]))], num_images=3, seed=11, variation=0.9, **TINY_CONTROLS,
        api_name="/generate",
    )
    assert len(gallery) == 3 and seed == 11
    parsed = [CAPTION.match(item["caption"]) for item in gallery]
    assert all(parsed), [item["caption"] for item in gallery]
    assert [int(m.group(3)) for m in parsed] == [1, 2, 3]
    assert [int(m.group(4)) for m in parsed] == [11, 12, 13]  # one derived seed per image
    assert [float(m.group(5)) for m in parsed] == [0.90] * 3  # the variation control, realised exactly
    assert all(m.group(1) == "no face found" for m in parsed)  # random weights draw no face
    from PIL import Image

    assert len(crops) == 1 and Image.open(crops[0]["image"]).size == (112, 112)
    assert "Stand-in identity vector" in info

    manifest, images = _zip(archive)
    assert sorted(images) == [e["file"] for e in manifest["images"]] and len(images) == 3
    assert manifest["conditioning"] == "stand-in" and manifest["identity"] == {"kind": "photos", "photos": ["astronaut.png"]}
    assert [e["verdict"] for e in manifest["images"]] == ["no face"] * 3
    assert [round(e["condition_cos"], 4) for e in manifest["images"]] == [0.9] * 3
    assert np.linalg.norm(manifest["identity_vector"]) == pytest.approx(1.0, abs=1e-5)

    # Same seed, fewer images: each image depends only on its own seed.
    _, _, archive2, _, _ = client.predict(
        photos=[handle_file(str(photos["astronaut"]))], num_images=2, seed=11, variation=0.9, **TINY_CONTROLS,
        api_name="/generate",
    )
    _, images2 = _zip(archive2)
    assert [images2[n] for n in sorted(images2)] == [images[n] for n in sorted(images)[:2]]


def test_photo_with_several_faces_uses_the_largest_and_says_so(app):
    _, client = app
    gallery, crops, _, _, info = client.predict(
        photos=[handle_file(str(T1))], num_images=1, seed=3, variation=1.0, **TINY_CONTROLS, api_name="/generate"
    )
    assert len(gallery) == 1 and len(crops) == 1
    assert "t1.jpg shows 6 faces; the largest one was used." in info


@pytest.mark.parametrize(
    ("photo", "message"),
    [
        ("gray", r"No face found in gray\.png\..*wider crop"),
        ("text", r"Cannot read notes\.jpg: not a recognised image format"),
    ],
)
def test_unusable_photos_are_reported_as_messages(app, photos, photo, message):
    from gradio_client.exceptions import AppError

    _, client = app
    with pytest.raises(AppError, match=message) as info:
        client.predict(
            photos=[handle_file(str(photos[photo]))], num_images=1, seed=0, variation=1.0, **TINY_CONTROLS,
            api_name="/generate",
        )
    assert "Traceback" not in str(info.value)


def test_random_identity_is_seeded(app):
    _, client = app
    first = client.predict(num_images=2, seed=5, variation=1.0, **TINY_CONTROLS, api_name="/random_identity")
    again = client.predict(num_images=2, seed=5, variation=1.0, **TINY_CONTROLS, api_name="/random_identity")
    other = client.predict(num_images=1, seed=6, variation=1.0, **TINY_CONTROLS, api_name="/random_identity")
    gallery, crops, archive, _, _ = first
    assert len(gallery) == 2 and crops == [] and all(CAPTION.match(g["caption"]) for g in gallery)
    manifest, images = _zip(archive)
    assert manifest["identity"] == {"kind": "random", "seed": 5}
    assert _zip(again[2]) == (manifest, images)
    assert _zip(other[2])[0]["identity_vector"] != manifest["identity_vector"]


def test_the_model_choice_renders_vec2face_through_synthface_render(app):
    """Vec2Face's random-weight model from the page's model choice: 112 x 112 images, byte for byte
    what synthface.render's renderer makes for the manifest's identity vector and seeds."""
    import io

    from PIL import Image

    from synthface.render import build_renderer

    _, client = app
    controls = {**TINY_CONTROLS, "model_choice": "vec2face-tiny"}
    gallery, _, archive, _, _ = client.predict(num_images=2, seed=5, variation=1.0, **controls,
                                               api_name="/random_identity")
    manifest, images = _zip(archive)
    assert len(gallery) == 2 and manifest["model"] == "vec2face-tiny"
    assert "random weights" in manifest["licence"]
    vector = np.asarray(manifest["identity_vector"], dtype=np.float32)
    expected = build_renderer("vec2face-tiny", device="cpu")(np.stack([vector, vector]), [5, 6])
    got = [np.asarray(Image.open(io.BytesIO(images[n]))) for n in sorted(images)]
    assert [g.shape for g in got] == [(112, 112, 3)] * 2
    # the manifest rounds the vector to 7 decimals: at most one grey level from the page's own bytes
    assert all(np.abs(g.astype(np.int16) - e).max() <= 1 for g, e in zip(got, expected))


def test_cli_demo_refuses_an_unknown_model_listing_the_generators(capsys):
    from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

    result = run_cli_inprocess(capsys, "demo", "--model", "vec3face")
    assert_clean_refusal(result, 2, "unknown generator 'vec3face'", "arc2face, tiny, idiff-uiface-casia")


def test_upload_over_the_size_limit_is_refused(app, tmp_path):
    _, client = app
    big = _write(tmp_path / "huge.png", b"\x89PNG" + bytes(demo_lib.MAX_UPLOAD_MB * 2**20 + 1))
    with pytest.raises(Exception, match=r"(?i)size|large|413"):
        client.predict(photos=[handle_file(str(big))], num_images=1, seed=0, variation=1.0, **TINY_CONTROLS, api_name="/generate")


def test_a_refused_server_path_reaches_the_client_as_a_message(app):
    """A file path the client did not upload is refused by the server; the client is told why
    (launch_demo's show_error), not sent {"error": null}."""
    import httpx

    url, _ = app
    data = [[{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}], 1, 2, 3.0, 0, False, 1.0, False, "tiny"]
    event = httpx.post(f"{url}gradio_api/call/generate", json={"data": data}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/generate/{event}", timeout=60).text
    payload = json.loads(stream.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0])
    assert "/etc/hostname" in payload["error"] and "not uploaded" in payload["error"], payload


# ------------------------------------------------------------------------------- logic, no server


class _ReturnsPhotos:
    """Pipeline double whose 'generated' images are given photos, to check the measured cosines."""

    def __init__(self, images):
        self.images = images

    def __call__(self, id_embeds, generator, output_type):
        from types import SimpleNamespace

        assert output_type == "pt" and len(generator) == len(id_embeds)
        return SimpleNamespace(images=self.images[: len(id_embeds)])


class _PhotoFamily(GeneratorFamily):
    """The double's family: its 'images' are already uint8 photos (of different sizes)."""

    name = "photos"

    def call_kwargs(self, pipeline, settings):
        return {}

    def to_uint8(self, images):
        return list(images)


def _photo_renderer(images) -> Renderer:
    """A real `synthface.render.Renderer` (the session replaces its settings per request) over the double."""
    return Renderer(pipeline=_ReturnsPhotos(images), family=_PhotoFamily(), name="tiny")


def test_captions_carry_the_analysers_cosine_and_verdict(tmp_path, monkeypatch):
    """Same person as the photo -> high cosine, keep; another person -> low cosine, drop."""
    session = demo_lib.DemoSession("tiny", dlib_analyzer())
    ident = session.identity([str(_png(tmp_path / "a.png", astronaut()))], "tiny")
    stranger = load_image(HANKS)  # another person, as an aligned 112 x 112 crop
    monkeypatch.setattr(session, "renderer", lambda model: _photo_renderer([astronaut(), stranger]))
    same, diff = session.render(ident, demo_lib.Settings(num_images=2, steps=1, seed=0), "tiny")
    threshold = session.analyzer.same_person_cos
    assert same.cos > 0.99 and same.verdict == "keep" and "ID cos 1.00 → keep" in same.caption
    assert diff.cos < threshold and diff.verdict == "drop" and f"ID cos {diff.cos:.2f} → drop" in diff.caption


class _DeclaresItsThreshold:
    """A custom analyser (dlib underneath) whose same-person cosine is its own declaration."""

    name, license, license_restricted, embedding_space = "custom", "test", False, "custom"

    def __init__(self, same_person_cos: float):
        self.same_person_cos = same_person_cos
        self.inner = dlib_analyzer()
        self.embedding_dim = self.inner.embedding_dim

    def analyze(self, images, *, all_faces=False):
        return self.inner.analyze(images, all_faces=all_faces)


def test_verdicts_use_a_custom_analysers_declared_threshold(tmp_path, monkeypatch):
    """The stranger's cosine lies between ArcFace's 0.3 and dlib's 0.92: a threshold just under it
    keeps the stranger (dlib's would drop), one just over it drops the stranger (0.3 would keep)."""
    analyzer = _DeclaresItsThreshold(0.0)
    session = demo_lib.DemoSession("tiny", analyzer)
    ident = session.identity([str(_png(tmp_path / "a.png", astronaut()))], "tiny")
    monkeypatch.setattr(session, "renderer", lambda model: _photo_renderer([load_image(HANKS)]))
    settings = demo_lib.Settings(num_images=1, steps=1, seed=0)
    (probe,) = session.render(ident, settings, "tiny")
    assert 0.3 + 0.01 < probe.cos < 0.92 - 0.01
    verdicts = {}
    for offset in (-0.01, 0.01):
        analyzer.same_person_cos = round(probe.cos + offset, 4)
        (judged,) = session.render(ident, settings, "tiny")
        assert judged.cos == probe.cos and demo_page._threshold_text(session) == f"{analyzer.same_person_cos:.2f}"
        verdicts[offset] = judged.verdict
    assert verdicts == {-0.01: "keep", 0.01: "drop"}


def test_standin_projection_keeps_cosines_and_is_fixed():
    p = demo_lib.standin_projection(128)
    assert p.shape == (512, 128)
    np.testing.assert_allclose(p.T @ p, np.eye(128), atol=1e-5)
    np.testing.assert_array_equal(p, demo_lib.standin_projection(128))


def test_a_real_model_without_the_arcface_recogniser_names_the_download(tmp_path, monkeypatch):
    from synthface import weights

    def missing(name, *a, **k):
        raise ModelNotFoundError(f"Model {name} was not found. Fetch it with: synthface models download {name}")

    monkeypatch.setattr(weights, "find", missing)
    session = demo_lib.DemoSession("arc2face", dlib_analyzer())
    with pytest.raises(ModelNotFoundError, match="synthface models download arc2face-arcface"):
        session.identity([str(_png(tmp_path / "a.png", astronaut()))], "arc2face")
    assert demo_lib.make_conditioner("auto", "tiny", session.analyzer).name == "stand-in"
    assert demo_lib.make_conditioner("auto", "vec2face-tiny", session.analyzer).name == "stand-in"
    with pytest.raises(ModelNotFoundError, match="arc2face-arcface"):
        demo_lib.make_conditioner("auto", "vec2face", session.analyzer)
    assert not demo_lib.lcm_available("arc2face")
    # Model choices come from synthface.render's families: the launched one, no real one whose weights are
    # missing, and the random-weight test models.
    assert demo_lib.installed_models("tiny") == ["tiny", "idiff-tiny", "vec2face-tiny", "vec2face-plus-tiny"]
    assert demo_lib.installed_models("vec2face") == ["vec2face", "tiny", "idiff-tiny", "vec2face-tiny", "vec2face-plus-tiny"]
    assert not demo_lib.lcm_available("vec2face") and not demo_lib.lcm_available("vec2face-tiny")


def test_settings_out_of_range_are_refused():
    from synthface.errors import InvalidInputError

    for bad in ({"num_images": 9}, {"steps": 0}, {"variation": 1.5}):
        with pytest.raises(InvalidInputError):
            demo_lib.Settings(**bad).check()


def test_cli_demo_help():
    from tests.cli_helpers import run_cli

    out = run_cli("demo", "--help", timeout=60)
    assert out.returncode == 0, out.stderr
    for option in ("--model", "--analyzer", "--analyzer-option", "--allow-pickle", "--host", "--port", "--share", "127.0.0.1"):
        assert option in out.stdout


def test_captions_give_the_apparent_age_and_gender_when_an_attribute_analyser_is_installed(tmp_path, monkeypatch):
    from tests.helpers import attributes as known
    from tests.helpers.engine import face_crops

    crops = face_crops()
    with_attrs = demo_lib.DemoSession("tiny", dlib_analyzer(), attribute_analyzer=known.NAME)
    without = demo_lib.DemoSession("tiny", dlib_analyzer(), attribute_analyzer="not-installed")
    for session in (with_attrs, without):
        ident = session.identity([str(_png(tmp_path / "a.png", crops[1]))], "tiny")
        monkeypatch.setattr(session, "renderer", lambda model: _photo_renderer([crops[1], crops[4]]))
        session.rendered = session.render(ident, demo_lib.Settings(num_images=2, steps=1, seed=0), "tiny")
    first, second = with_attrs.rendered
    assert first.caption.endswith(" · apparent age 61, male") and second.caption.endswith(" · apparent age 52, female")
    assert all(CAPTION.match(r.caption) for r in without.rendered)  # not installed: the caption as before
    assert without.attribute_analyzer is None
