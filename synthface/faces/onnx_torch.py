"""Run an ONNX face model (ArcFace / IResNet recognisers, SCRFD detectors) as a torch module, batched on any device.

This avoids onnxruntime-gpu and its CUDA-version pairing: the graph is executed op by op with
torch functions and the ONNX initializers become module buffers, so `.to("cuda")`, `.half()` and
`torch.compile` work as for any module. Only the operators recogniser and detector graphs use are implemented;
anything else is refused up front with the list of missing operators.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthface.errors import FileFormatError, ModelNotFoundError

_OPS: dict[str, Callable] = {}


def _op(*names: str):
    def wrap(fn):
        for name in names:
            _OPS[name] = fn
        return fn

    return wrap


def supported_ops() -> list[str]:
    return sorted(_OPS)


class OnnxModule(nn.Module):
    """An ONNX graph executed with torch ops. Build it with `onnx_to_torch(path_or_model)`."""

    def __init__(self, model) -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        missing = sorted({n.op_type for n in graph.node} - set(_OPS) - {"Constant"})
        if missing:
            raise FileFormatError(
                f"The ONNX graph uses operators the torch runner does not implement: {', '.join(missing)}. "
                "Run this model with onnxruntime instead (runtime='onnxruntime')."
            )
        self._names: dict[str, str] = {}
        for init in graph.initializer:
            self._add_constant(init.name, numpy_helper.to_array(init))
        init_names = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        #: the graph's default-domain (ai.onnx) opset version, or None when it imports none.
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        self.nodes = []
        for node in graph.node:
            attrs = {a.name: _attr_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                self._add_constant(node.output[0], _constant_value(attrs))
                continue
            inputs = list(node.input)
            if node.op_type == "Softmax" and self.opset is not None and self.opset < 13:
                # Softmax-1/11 flattens to 2-D at `axis` (default 1) and normalises over the trailing block
                attrs = {"axis": attrs.get("axis", 1), "coerce_2d": True}
            if node.op_type == "Resize" and self.opset is not None and self.opset < 11:
                # Resize-10 takes (X, scales) and always resizes asymmetrically, nearest as onnxruntime's
                # opset-10 kernel rounds; bind scales as the later opsets' third input
                inputs = [inputs[0], "", *inputs[1:2]]
                attrs = {**attrs, "coordinate_transformation_mode": "asymmetric", "nearest_mode": _RESIZE10_NEAREST}
            self.nodes.append((node.op_type, inputs, list(node.output), attrs))

    def _add_constant(self, onnx_name: str, array: np.ndarray) -> None:
        key = f"c{len(self._names)}_" + re.sub(r"\W", "_", onnx_name)[:40]
        self._names[onnx_name] = key
        tensor = torch.from_numpy(np.array(array, copy=True))
        self.register_buffer(key, tensor, persistent=True)

    def forward(self, *inputs: torch.Tensor):
        env: dict[str, object] = {name: getattr(self, key) for name, key in self._names.items()}
        env.update(zip(self.input_names, inputs))
        env[""] = None  # an omitted optional input
        for op_type, ins, outs, attrs in self.nodes:
            result = _OPS[op_type](*[env[i] for i in ins], **attrs)
            if not isinstance(result, tuple):
                result = (result,)
            env.update(zip(outs, result))
        out = [env[name] for name in self.output_names]
        return out[0] if len(out) == 1 else tuple(out)


def read_onnx(path: str | Path, what: str):
    """The ONNX model in `path` (`what` names it in errors, e.g. "Detector").

    Raises ModelNotFoundError when the file does not exist, FileFormatError when it is not ONNX."""
    import onnx

    from synthface.weights import model_of_file, onnx_graph_problem, spec

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{what} file {path} does not exist.")
    name = model_of_file(path)
    fix = (f"Check it with `synthface models verify {name}` and fetch it again with `{spec(name).fetch_command}`."
           if name else "Copy or export it again.")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{what} file {path} is empty (0 bytes): the copy or download was cut off. {fix}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise FileFormatError(f"Cannot read {path} as an ONNX model: {exc}. {fix}") from None
    problem = onnx_graph_problem(model)
    if problem:
        raise FileFormatError(f"{what} file {path} is not a usable ONNX model: {problem}. {fix}")
    return model


def float_initializers(model):
    """(name, array) of each floating-point initializer of a loaded ONNX model, e.g. to check weights are finite."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if np.issubdtype(array.dtype, np.floating):
            yield init.name, array


def onnx_to_torch(source) -> OnnxModule:
    """Convert an ONNX file (path or bytes) or a loaded `onnx.ModelProto` to an `OnnxModule`."""
    import onnx

    if isinstance(source, (str, Path)):
        try:
            source = onnx.load(str(source))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise FileFormatError(f"Cannot read {source} as an ONNX model: {exc}") from None
    elif isinstance(source, (bytes, bytearray)):
        source = onnx.load_model_from_string(bytes(source))
    return OnnxModule(source)


# --- attribute helpers ---------------------------------------------------------------------------


def _attr_value(attr):
    from onnx import helper

    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _constant_value(attrs: dict) -> np.ndarray:
    from onnx import numpy_helper

    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise FileFormatError(f"Unsupported Constant node attributes: {sorted(attrs)}")


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


# --- operators -----------------------------------------------------------------------------------


@_op("Conv")
def _conv(x, w, b=None, *, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET", kernel_shape=None):
    nd = w.dim() - 2
    strides, dilations = strides or [1] * nd, dilations or [1] * nd
    pads = pads or [0] * (2 * nd)
    if auto_pad not in ("NOTSET", "VALID"):
        raise FileFormatError(f"Conv auto_pad={auto_pad} is not supported by the torch runner")
    begin, end = pads[:nd], pads[nd:]
    if begin != end:  # asymmetric: pad explicitly (F.pad takes the last dimension first)
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (begin[i], end[i])])
        begin = [0] * nd
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return conv(x, w, b, stride=strides, padding=begin, dilation=dilations, groups=group)


@_op("BatchNormalization")
def _bn(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


@_op("PRelu")
def _prelu(x, slope):
    return torch.where(x >= 0, x, x * slope)


@_op("Relu")
def _relu(x):
    return F.relu(x)


@_op("LeakyRelu")
def _leaky(x, *, alpha=0.01):
    return F.leaky_relu(x, alpha)


@_op("Sigmoid")
def _sigmoid(x):
    return torch.sigmoid(x)


@_op("Clip")
def _clip(x, lo=None, hi=None, *, min=None, max=None):  # noqa: A002 - ONNX attribute names
    lo = min if lo is None else lo
    hi = max if hi is None else hi
    return torch.clamp(x, lo, hi)


@_op("Add")
def _add(a, b):
    return a + b


@_op("Sub")
def _sub(a, b):
    return a - b


@_op("Mul")
def _mul(a, b):
    return a * b


@_op("Div")
def _div(a, b):
    return a / b


@_op("Identity", "Dropout")
def _identity(x, *rest, **attrs):
    return x


@_op("Flatten")
def _flatten(x, *, axis=1):
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@_op("Reshape")
def _reshape(x, shape, *, allowzero=0):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@_op("Shape")
def _shape(x, *, start=0, end=None):
    return torch.tensor(x.shape[start:end], dtype=torch.int64)


@_op("Gather")
def _gather(x, idx, *, axis=0):
    return torch.index_select(x, axis, idx.reshape(-1).long()).reshape(
        x.shape[:axis] + idx.shape + x.shape[axis + 1 :]
    )


@_op("Unsqueeze")
def _unsqueeze(x, axes=None, **attrs):
    axes = _ints(axes if axes is not None else attrs["axes"])
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


@_op("Squeeze")
def _squeeze(x, axes=None, **attrs):
    axes = axes if axes is not None else attrs.get("axes")
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in _ints(axes)), reverse=True):
        x = x.squeeze(a)
    return x


@_op("Concat")
def _concat(*xs, axis):
    return torch.cat([t if t.dim() else t.reshape(1) for t in xs], dim=axis)


@_op("Transpose")
def _transpose(x, *, perm=None):
    return x.permute(*(perm or reversed(range(x.dim()))))


@_op("Gemm")
def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = alpha * (a @ b)
    return y + beta * c if c is not None else y


@_op("MatMul")
def _matmul(a, b):
    return torch.matmul(a, b)


@_op("GlobalAveragePool")
def _gap(x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("ReduceMean")
def _reduce_mean(x, axes=None, *, keepdims=1, **attrs):
    axes = axes if axes is not None else attrs.get("axes")
    dims = tuple(_ints(axes)) if axes is not None else tuple(range(x.dim()))
    return x.mean(dim=dims, keepdim=bool(keepdims))


@_op("MaxPool")
def _max_pool(x, **kw):
    kernel, strides, pads = kw["kernel_shape"], kw.get("strides") or [1, 1], kw.get("pads") or [0, 0, 0, 0]
    return F.max_pool2d(x, kernel, strides, pads[:2], ceil_mode=bool(kw.get("ceil_mode", 0)))


@_op("AveragePool")
def _avg_pool(x, **kw):
    kernel, strides, pads = kw["kernel_shape"], kw.get("strides") or [1, 1], kw.get("pads") or [0, 0, 0, 0]
    return F.avg_pool2d(
        x, kernel, strides, pads[:2], ceil_mode=bool(kw.get("ceil_mode", 0)),
        count_include_pad=bool(kw.get("count_include_pad", 0)),
    )


@_op("Softmax")
def _softmax(x, *, axis=-1, coerce_2d=False):
    """ONNX Softmax: from opset 13 along `axis`; before it (OnnxModule sets `coerce_2d`) over all the
    dimensions from `axis` on, as the input flattened to 2-D there."""
    if coerce_2d:
        axis = axis % x.dim()
        return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)
    return torch.softmax(x, dim=axis)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@_op("Pad")
def _pad_op(x, pads=None, constant_value=None, axes=None, *, mode="constant", value=0.0, **attrs):
    """ONNX Pad (opset 11+: pads, constant_value and axes as inputs; before: `pads`/`value` attributes).
    pads lists every padded axis's begin amounts, then their end amounts; negative amounts crop."""
    if mode not in _PAD_MODES:
        raise FileFormatError(f"Pad mode={mode!r} is not an ONNX padding mode ({', '.join(_PAD_MODES)}).")
    amounts = _ints(pads if pads is not None else attrs["pads"])
    dims = [a % x.dim() for a in _ints(axes)] if axes is not None else list(range(x.dim()))
    if len(amounts) != 2 * len(dims):
        raise FileFormatError(f"Pad has {len(amounts)} pad amounts for {len(dims)} axes; it needs two per axis.")
    per_axis = {d: (amounts[i], amounts[i + len(dims)]) for i, d in enumerate(dims)}
    padded = [d for d, p in per_axis.items() if p != (0, 0)]
    if not padded:
        return x
    # F.pad takes (begin, end) pairs from the last dimension backwards, down to the first padded one
    flat = [p for d in range(x.dim() - 1, min(padded) - 1, -1) for p in per_axis.get(d, (0, 0))]
    fill = float(constant_value.reshape(-1)[0]) if constant_value is not None and constant_value.numel() else float(value)
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=fill)
    return F.pad(x, flat, mode=_PAD_MODES[mode])


# --- Resize (FPN upsampling in detector graphs) ----------------------------------------------------

_NEAREST_ROUNDING = {
    "round_prefer_floor": lambda x: torch.ceil(x - 0.5),
    "round_prefer_ceil": lambda x: torch.floor(x + 0.5),
    "floor": torch.floor,
    "ceil": torch.ceil,
}
#: Resize-10's nearest rounding (no nearest_mode attribute then): onnxruntime's opset-10 kernel
#: truncates when upsampling an axis and rounds up when downsampling it.
_RESIZE10_NEAREST = "opset10"


def _source_coords(out_len: int, in_len: int, scale: float, mode: str) -> torch.Tensor:
    """ONNX Resize's coordinate transform: output index -> (fractional) input coordinate, float64."""
    i = torch.arange(out_len, dtype=torch.float64)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros(1, dtype=torch.float64)
    if mode == "align_corners":
        return i * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros(1, dtype=torch.float64)
    raise FileFormatError(
        f"Resize coordinate_transformation_mode={mode!r} is not supported by the torch runner (it supports "
        "asymmetric, half_pixel, pytorch_half_pixel and align_corners). Run this model with onnxruntime instead."
    )


@_op("Resize")
def _resize(x, roi=None, scales=None, sizes=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor", axes=None, antialias=0, keep_aspect_ratio_policy="stretch",
            cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0):
    """ONNX Resize, modes nearest and linear (separable along each resized axis), from `scales` or
    `sizes` as exporters write them (PyTorch's F.interpolate: asymmetric + floor for nearest).
    Opset-10 nodes (X, scales) arrive here rebound by `OnnxModule` as (X, None, scales)."""
    if mode not in ("nearest", "linear") or antialias or keep_aspect_ratio_policy != "stretch" or exclude_outside:
        raise FileFormatError(
            f"Resize with mode={mode!r}, antialias={antialias}, keep_aspect_ratio_policy={keep_aspect_ratio_policy!r}, "
            f"exclude_outside={exclude_outside} is not supported by the torch runner (only nearest and linear "
            "without antialiasing). Run this model with onnxruntime instead."
        )
    axes = [a % x.dim() for a in (axes or range(x.dim()))]
    if sizes is not None and sizes.numel():
        out_lens = _ints(sizes)
        factors = [o / x.shape[a] for a, o in zip(axes, out_lens)]
    elif scales is None or not scales.numel():
        raise FileFormatError(
            "A Resize node gives neither scales nor sizes, so its output size is undefined: from opset 11 its inputs "
            "are (X, roi, scales, sizes) with scales or sizes set, in opset 10 (X, scales). Re-export the model so the "
            "node has one of them and the graph declares the opset its nodes follow, or run it with onnxruntime "
            "(runtime='onnxruntime')."
        )
    else:
        factors = [float(s) for s in scales.tolist()]
        out_lens = [int(np.floor(x.shape[a] * s)) for a, s in zip(axes, factors)]
    for axis, out_len, scale in zip(axes, out_lens, factors):
        in_len = x.shape[axis]
        if out_len == in_len and scale == 1.0:
            continue
        src = _source_coords(out_len, in_len, scale, coordinate_transformation_mode)
        if mode == "nearest" and nearest_mode == _RESIZE10_NEAREST:
            index = (torch.ceil(src) if scale < 1 else torch.floor(src)).clamp(0, in_len - 1).long().to(x.device)
            x = torch.index_select(x, axis, index)
            continue
        if mode == "nearest":
            if nearest_mode not in _NEAREST_ROUNDING:
                raise FileFormatError(f"Resize nearest_mode={nearest_mode!r} is not an ONNX rounding mode ({', '.join(_NEAREST_ROUNDING)}).")
            index = _NEAREST_ROUNDING[nearest_mode](src).clamp(0, in_len - 1).long().to(x.device)
            x = torch.index_select(x, axis, index)
            continue
        src = src.clamp(0, in_len - 1)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=in_len - 1)
        shape = [1] * x.dim()
        shape[axis] = out_len
        w = (src - lo).to(device=x.device, dtype=x.dtype).reshape(shape)
        x = torch.index_select(x, axis, lo.to(x.device)) * (1 - w) + torch.index_select(x, axis, hi.to(x.device)) * w
    return x
