"""Face analysis on the device (runtime="torch": batched alignment and recognition in torch) gives
the onnxruntime path's Face results on real photos, here on the CPU device."""

from __future__ import annotations

import numpy as np

from synthface import engine
from synthface.faces import get_analyzer
from tests.helpers.engine import small_recipe
from tests.helpers.faces_onnx import random_recogniser_bytes
from tests.helpers.faces_photos import photos


def test_device_analysis_gives_the_onnxruntime_faces(tmp_path):
    path = tmp_path / "arcface.onnx"
    path.write_bytes(random_recogniser_bytes())
    cpu = get_analyzer("insightface", detector="dlib", recognizer=str(path))
    device = get_analyzer("insightface", detector="dlib", recognizer=str(path), runtime="torch", device="cpu")
    device.recognizer.batch_size = 4  # 15 faces: several batches per image shape
    images = photos()
    want, got = cpu.analyze(images, all_faces=True), device.analyze(images, all_faces=True)
    assert [len(f) for f in got] == [len(f) for f in want] == [6] + [1] * 9
    for w, g in zip(sum(want, []), sum(got, [])):
        np.testing.assert_array_equal(g.bbox, w.bbox)
        np.testing.assert_array_equal(g.kps, w.kps)
        assert g.det_score == w.det_score
        assert float(g.embedding @ w.embedding) > 0.999
        assert abs(float(np.linalg.norm(g.embedding)) - 1) < 1e-5


def test_a_recipe_selects_the_device_analyser(tmp_path):
    path = tmp_path / "arcface.onnx"
    path.write_bytes(random_recogniser_bytes())
    recipe = small_recipe(filtering={"enabled": True, "analyzer": "insightface", "analyzer_options": {
        "detector": "dlib", "recognizer": str(path), "runtime": "torch", "device": "cpu"}})
    analyzer = engine.make_analyzer(recipe)
    assert analyzer.recognizer.runtime == "torch" and analyzer.recognizer.device.type == "cpu"
