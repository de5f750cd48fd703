"""The demo's conditioning recogniser for a real Vec2Face (its own IResNet, with arcface.onnx as a
noted fallback) and its analyser options (`--analyzer-option`, the device path of insightface)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synthface import demo as demo_lib
from synthface import demo_page, weights
from synthface.errors import InvalidInputError, ModelNotFoundError
from synthface.faces import norm_crop
from synthface.fr.backbones import iresnet
from synthface.generators import conditioning
from synthface.generators.vec2face import conditioning as vec2face_conditioning
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.helpers.faces import astronaut, dlib_analyzer
from tests.helpers.faces_onnx import random_recogniser_bytes


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory):
    """A random-weight IResNet (narrow, same key names as the published iresnet100) saved as a bare
    state dict under the published file name, and the module itself for the independent computation."""
    torch.manual_seed(0)
    model = iresnet("r18", widths=(16, 16, 32, 32)).eval()
    path = tmp_path_factory.mktemp("vec2face") / "arcface-r100-glint360k.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture
def installed(monkeypatch, recogniser, tmp_path):
    """weights.find over a dict of installed models (name -> path); others are not installed."""
    files = {"vec2face-arcface": recogniser[0]}

    def find(name, path=None, allow_download=False):
        if name not in files:
            raise ModelNotFoundError(f"Model {name} was not found. Fetch it with: synthface models download {name}")
        return files[name]

    monkeypatch.setattr(weights, "find", find)
    monkeypatch.delenv(weights.PICKLE_ENV, raising=False)
    return files


def test_vec2face_conditioner_equals_the_aligned_crop_through_the_backbone(recogniser):
    path, model = recogniser
    image = astronaut()
    (face,) = dlib_analyzer().analyze([image])[0][:1]
    got = vec2face_conditioning.Vec2FaceConditioner(path, allow_pickle=True)([image], [face])
    crop = norm_crop(image, face.kps, 112)  # ArcFace-aligned, RGB uint8
    x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        raw = model(x)[0].numpy()
    assert got.shape == (1, 512) and abs(np.linalg.norm(got[0]) - 1) < 1e-5
    assert float(got[0] @ raw / np.linalg.norm(raw)) > 0.9999


def test_a_real_vec2face_uses_its_own_recogniser_when_installed(installed, recogniser, tmp_path):
    analyzer = dlib_analyzer()
    with pytest.raises(ModelNotFoundError, match="--allow-pickle"):  # installed, but a pickle: ask for the opt-in
        demo_lib.make_conditioner("auto", "vec2face", analyzer)
    own = demo_lib.make_conditioner("auto", "vec2face", analyzer, allow_pickle=True)
    assert isinstance(own, vec2face_conditioning.Vec2FaceConditioner) and own.note == "" and own.name == "vec2face-arcface"
    # the session's identity from a photo is that recogniser's unit vector; the page shows no warning
    session = demo_lib.DemoSession("vec2face", analyzer, allow_pickle=True)
    photo = tmp_path / "a.png"
    Image.fromarray(astronaut()).save(photo)
    ident = session.identity([str(photo)], "vec2face")
    face = analyzer.analyze([astronaut()])[0][0]
    expected = own([astronaut()], [face])[0]
    assert float(ident.vector @ expected) > 0.9999 and demo_page._standin_note(session, "vec2face") == ""
    # random-weight test models keep today's conditioning (arcface.onnx, else the stand-in)
    assert demo_lib.make_conditioner("auto", "vec2face-tiny", analyzer, allow_pickle=True).name == "stand-in"


def test_without_its_recogniser_vec2face_falls_back_to_arcface_onnx_and_says_so(installed, tmp_path):
    analyzer = dlib_analyzer()
    del installed["vec2face-arcface"]
    with pytest.raises(ModelNotFoundError, match="synthface models download vec2face-arcface"):
        demo_lib.make_conditioner("auto", "vec2face", analyzer)
    installed["arc2face-arcface"] = tmp_path / "arcface.onnx"
    installed["arc2face-arcface"].write_bytes(random_recogniser_bytes())
    fallback = demo_lib.make_conditioner("auto", "vec2face", analyzer)
    assert isinstance(fallback, conditioning.ArcFaceConditioner) and fallback.note == vec2face_conditioning.VEC2FACE_NOTE
    assert "not installed" in fallback.note and "synthface models download vec2face-arcface" in fallback.note
    session = demo_lib.DemoSession("vec2face", analyzer)
    assert demo_page._standin_note(session, "vec2face") == vec2face_conditioning.VEC2FACE_NOTE  # shown at the top of the page
    assert demo_lib.make_conditioner("auto", "arc2face", analyzer).note == ""


def test_analyzer_options_reach_the_insightface_device_path(tmp_path):
    path = tmp_path / "arcface.onnx"
    path.write_bytes(random_recogniser_bytes())
    options = {"detector": "dlib", "recognizer": str(path), "runtime": "torch", "device": "cpu"}
    session = demo_lib.DemoSession("tiny", "insightface", analyzer_options=options)
    assert session.analyzer.recognizer.runtime == "torch" and session.analyzer.recognizer.device.type == "cpu"
    for bad, words in (({"device": ["cpu"]}, "is a list"), ({"no such": 1}, "not a valid keyword name")):
        with pytest.raises(InvalidInputError, match=words):
            demo_lib.DemoSession("tiny", "insightface", analyzer_options=bad)


def test_cli_demo_passes_analyzer_options_to_the_session(capsys, monkeypatch, tmp_path):
    path = tmp_path / "arcface.onnx"
    path.write_bytes(random_recogniser_bytes())
    built = {}

    def build_demo(model, analyzer, *, session):
        built.update(model=model, analyzer=analyzer, session=session)
        return "page"

    monkeypatch.setattr(demo_page, "build_demo", build_demo)
    monkeypatch.setattr(demo_page, "launch_demo", lambda page, **kwargs: built.update(page=page, **kwargs))
    result = run_cli_inprocess(
        capsys, "demo", "--model", "tiny", "--analyzer", "insightface", "--analyzer-option", "detector=dlib",
        "--analyzer-option", f"recognizer={path}", "--analyzer-option", "runtime=torch", "--analyzer-option", "device=cpu",
        "--analyzer-option", "det_size=320",
    )
    assert result.returncode == 0, result.output
    session = built["session"]
    assert session.analyzer_options == {"detector": "dlib", "recognizer": str(path), "runtime": "torch",
                                        "device": "cpu", "det_size": 320}
    assert session.analyzer.recognizer.runtime == "torch" and session.analyzer.recognizer.device.type == "cpu"
    assert built["page"] == "page" and built["host"] == "127.0.0.1"
    session.close()


@pytest.mark.parametrize("option, words", [
    ("colour=red", ["unknown option colour for the dlib face analyser", "it accepts: detector"]),
    ("device", ["--analyzer-option 'device' is not name=value"]),
    ("upsample=[1, 2]", ["analyser option upsample = [1, 2] is a list"]),
])
def test_cli_demo_refuses_a_bad_analyzer_option(capsys, monkeypatch, option, words):
    monkeypatch.setattr(demo_page, "launch_demo", lambda *a, **k: pytest.fail("the page must not start"))
    result = run_cli_inprocess(capsys, "demo", "--model", "tiny", "--analyzer", "dlib", "--analyzer-option", option)
    assert_clean_refusal(result, 2, *words)


def test_cli_demo_refuses_a_bad_insightface_value_before_loading(capsys, monkeypatch):
    monkeypatch.setattr(demo_page, "launch_demo", lambda *a, **k: pytest.fail("the page must not start"))
    result = run_cli_inprocess(capsys, "demo", "--model", "tiny", "--analyzer", "insightface",
                               "--analyzer-option", "det_size=abc")
    assert_clean_refusal(result, 2, "det_size must be a multiple of 32")


def test_idiff_face_conditions_on_elasticface_when_placed_and_says_so_when_it_falls_back(installed, recogniser, tmp_path):
    from synthface.generators.idiff.family import IDIFF_NOTE

    analyzer = dlib_analyzer()
    installed["idiff-elasticface"] = recogniser[0]  # an IResNet state dict, as ElasticFace's 295672backbone.pth
    own = demo_lib.make_conditioner("auto", "idiff-uiface-casia", analyzer, allow_pickle=True)
    assert isinstance(own, conditioning.IResNetConditioner) and own.name == "idiff-elasticface" and own.note == ""
    image = astronaut()
    face = analyzer.analyze([image])[0][0]
    crop = norm_crop(image, face.kps, 112)
    x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        raw = recogniser[1](x)[0].numpy()
    assert float(own([image], [face])[0] @ raw / np.linalg.norm(raw)) > 0.9999
    del installed["idiff-elasticface"]
    installed["arc2face-arcface"] = tmp_path / "arcface.onnx"
    installed["arc2face-arcface"].write_bytes(random_recogniser_bytes())
    fallback = demo_lib.make_conditioner("auto", "idiff-uiface-casia", analyzer)
    assert isinstance(fallback, conditioning.ArcFaceConditioner) and fallback.note == IDIFF_NOTE
    assert "ElasticFace" in fallback.note and "idiff-elasticface" in fallback.note
    session = demo_lib.DemoSession("idiff-uiface-casia", analyzer)
    assert demo_page._standin_note(session, "idiff-uiface-casia") == IDIFF_NOTE  # shown at the top of the page
