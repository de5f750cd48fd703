"""The ONNX recogniser path with a randomly initialised IResNet-style network exported at test
time: shapes, normalisation, batching, the torch runner against onnxruntime, pack errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.errors import FileFormatError, InvalidInputError, ModelNotFoundError
from synthface.faces import get_analyzer, norm_crop
from synthface.faces.align import norm_crop_torch
from synthface.faces.onnx_backend import ArcFaceRecognizer, find_pack_files
from synthface.faces.onnx_torch import onnx_to_torch
from tests.helpers.faces import t1_faces, t1_image
from tests.helpers.faces_onnx import EMB, random_recogniser_bytes


@pytest.fixture
def recogniser_path(tmp_path):
    path = tmp_path / "arcface.onnx"
    path.write_bytes(random_recogniser_bytes())
    return path


def crops_from_t1() -> np.ndarray:
    return np.stack([norm_crop(t1_image(), f.kps) for f in t1_faces()])


def test_shapes_normalisation_and_batching(recogniser_path):
    import onnxruntime as ort

    rec = ArcFaceRecognizer(recogniser_path)
    crops = crops_from_t1()
    emb = rec(crops)
    assert emb.shape == (6, EMB) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # the documented preprocessing: RGB, NCHW, (x - 127.5) / 127.5, then L2
    sess = ort.InferenceSession(str(recogniser_path), providers=["CPUExecutionProvider"])
    blob = ((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    raw = sess.run(None, {"input.1": blob})[0]
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    one_by_one = np.concatenate([rec(c[None]) for c in crops])
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)
    assert rec(crops[:0]).shape == (0, EMB)
    with pytest.raises(InvalidInputError, match="norm_crop"):
        rec(crops[:, :100])


def test_torch_runner_matches_onnxruntime(recogniser_path):
    crops = crops_from_t1()
    ref = ArcFaceRecognizer(recogniser_path)(crops)
    rec = ArcFaceRecognizer(recogniser_path, runtime="torch", device="cpu")
    got = rec(crops)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # fully on tensors: batched warp + recogniser, as on the GPU
    image = torch.from_numpy(np.repeat(t1_image()[None], 6, axis=0))
    kps = torch.from_numpy(np.stack([f.kps for f in t1_faces()]))
    on_device = rec.forward_tensor(norm_crop_torch(image, kps)).numpy()
    assert (np.sum(on_device * ref, axis=1) > 0.999).all()


def test_converter_refuses_unknown_ops():
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->i")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(FileFormatError, match="Einsum"):
        onnx_to_torch(helper.make_model(graph))
    assert onnx is not None


def test_analyzer_with_explicit_recogniser_and_dlib_detector(recogniser_path):
    analyzer = get_analyzer("insightface", detector="dlib", recognizer=recogniser_path)
    assert analyzer.embedding_dim == EMB and "non-commercial" in analyzer.license
    faces = analyzer.analyze([t1_image()], all_faces=True)[0]
    assert len(faces) == 6 and all(f.backend == "insightface" for f in faces)
    np.testing.assert_allclose(np.stack([f.embedding for f in faces]), analyzer.embed(crops_from_t1()), atol=1e-5)


def test_pack_errors(tmp_path, recogniser_path):
    with pytest.raises(ModelNotFoundError, match="nested"):
        nested = tmp_path / "antelopev2" / "antelopev2"
        nested.mkdir(parents=True)
        (nested / "glintr100.onnx").write_bytes(recogniser_path.read_bytes())
        find_pack_files(tmp_path / "antelopev2")
    with pytest.raises(ModelNotFoundError, match="incomplete.*SCRFD detector"):
        find_pack_files(nested)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        find_pack_files(tmp_path / "nothing")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(FileFormatError):
        ArcFaceRecognizer(tmp_path / "broken.onnx")


def test_detection_size_fallback_for_tight_crops(recogniser_path):
    """SCRFD finds nothing at 640 on a face that fills the frame; smaller sizes are tried next."""
    analyzer = get_analyzer("insightface", detector="dlib", recognizer=recogniser_path)
    tried = []

    class FakeScrfd:
        def prepare(self, ctx_id, input_size, det_thresh):
            self.size = input_size

        def detect(self, img, input_size):
            tried.append(input_size[0])
            if input_size[0] > 320:
                return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
            det = np.array([[10, 10, 50, 50, 0.9], [0, 0, 100, 100, 0.8]], np.float32)
            return det, np.zeros((2, 5, 2), np.float32)

    analyzer._dlib, analyzer._scrfd = None, FakeScrfd()
    faces = analyzer.detect([np.zeros((120, 120, 3), np.uint8)])[0]
    assert tried == [640, 480, 320]
    assert [f.area for f in faces] == [10000, 1600]  # largest first
