"""Random-weight face models in the real ONNX layouts, for tests and benchmarks only.

No real SCRFD or ArcFace weights can be fetched offline, so tests and `benchmarks/gpu_bench.py`
build graphs with random weights that have exactly the interface insightface's models have: the
same input conventions, output count, order, shapes and ranks. They prove that code handles those
layouts and time the real code path; what they detect and embed means nothing. Never use them to
judge faces.
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as F
from torch import nn

#: Strides and anchors per location of SCRFD's 3-level models (det_10g / scrfd_10g_bnkps).
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
SCORE_WEIGHT_STD = 0.3


class _TinyScrfd(nn.Module):
    """SCRFD's layout at toy size: a strided conv backbone (strides 4 to 32), an FPN with nearest
    2x upsampling (exported as `Resize`), and per-stride score / box / keypoint heads whose outputs
    are reshaped as det_10g's: (H*W*2, 1) scores after Sigmoid, (H*W*2, 4) box distances and
    (H*W*2, 10) keypoint offsets in units of the stride, rows ordered (image, y, x, anchor)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = (3, 8, width, width, width, width)  # strides 2, 4, 8, 16, 32
        self.down = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1) for i in range(5))
        self.lateral = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in SCRFD_STRIDES)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in SCRFD_STRIDES)
        a = SCRFD_ANCHORS
        self.score = nn.ModuleList(nn.Conv2d(width, a, 3, 1, 1) for _ in SCRFD_STRIDES)
        self.bbox = nn.ModuleList(nn.Conv2d(width, 4 * a, 3, 1, 1) for _ in SCRFD_STRIDES)
        self.kps = nn.ModuleList(nn.Conv2d(width, 10 * a, 3, 1, 1) for _ in SCRFD_STRIDES)
        #: per stride, one image's row count to reshape to, or None: reshape to (-1, width), any batch.
        self.rows: list[int | None] = [None] * len(SCRFD_STRIDES)

    def forward(self, x):
        feats = []
        for i, conv in enumerate(self.down):
            x = F.relu(conv(x))
            if i >= 2:
                feats.append(x)
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in (1, 0):  # top-down: stride 32 -> 16 -> 8
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], scale_factor=2.0, mode="nearest")
        pyramid = [F.relu(s(p)) for s, p in zip(self.smooth, laterals)]
        scores = [torch.sigmoid(h(p)).permute(0, 2, 3, 1).reshape(r or -1, 1)
                  for h, p, r in zip(self.score, pyramid, self.rows)]
        boxes = [h(p).permute(0, 2, 3, 1).reshape(r or -1, 4) for h, p, r in zip(self.bbox, pyramid, self.rows)]
        points = [h(p).permute(0, 2, 3, 1).reshape(r or -1, 10) for h, p, r in zip(self.kps, pyramid, self.rows)]
        return (*scores, *boxes, *points)


def random_scrfd_bytes(seed: int = 0, *, score_bias: float = -2.5, input_size: tuple[int, int] | None = None,
                       one_image: bool = False) -> bytes:
    """A random SCRFD-layout detector as ONNX bytes: input "input.1" (1, 3, H, W), H and W dynamic
    (multiples of 32) or fixed to `input_size` = (width, height) as some exports are; 9 outputs in
    insightface's order (3 scores, 3 box distances, 3 keypoint sets, for strides 8, 16, 32), rank 2
    like det_10g's. The same arguments give the same bytes. `one_image` (needs `input_size`):
    the output reshapes are fixed to one image's row counts, as in exports whose batch dimension is
    fixed to 1, so the graph runs only one image per forward (onnxruntime and insightface run it).

    Built so its output is well-formed on any input: box distances are positive (about 3 strides,
    so boxes are valid and overlap their neighbours, which exercises NMS); flat regions such as the
    letterbox border score sigmoid(score_bias) (no ties above the threshold); elsewhere the score
    follows the image's texture, so with the default bias tens of anchors pass det_thresh=0.5 on a
    photo (more on noise, none on a uniform image), and fewer at smaller input sizes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _TinyScrfd().eval()
        with torch.no_grad():
            # flat regions (the letterbox's black border) give exactly zero features: the first
            # filters are zero-mean and no feature conv has a bias, so scores there are the bias's
            for conv in (*model.down, *model.lateral, *model.smooth):
                nn.init.kaiming_normal_(conv.weight)  # features of order 1 at every level
                conv.bias.zero_()
            first = model.down[0].weight
            first.sub_(first.mean(dim=(1, 2, 3), keepdim=True))
            heads = ((model.score, SCORE_WEIGHT_STD, score_bias), (model.bbox, 0.02, 3.0), (model.kps, 0.1, 0.0))
            for convs, weight_std, bias in heads:
                for conv in convs:
                    conv.weight.normal_(0.0, weight_std)
                    conv.bias.fill_(bias).add_(torch.randn_like(conv.bias) * 0.1)
    width, height = input_size or (96, 64)
    if one_image:
        if input_size is None:
            raise ValueError("one_image=True needs a fixed input_size")
        model.rows = [(height // s) * (width // s) * SCRFD_ANCHORS for s in SCRFD_STRIDES]
    return _export(model, torch.zeros(1, 3, height, width), input_names=["input.1"],
                   output_names=[f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in SCRFD_STRIDES],
                   dynamic_axes=None if input_size else {"input.1": {2: "height", 3: "width"}}, opset_version=11)


def _export(model: nn.Module, example: torch.Tensor, **kwargs) -> bytes:
    """`torch.onnx.export` to bytes with the TorchScript exporter (no onnxscript needed offline)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buf, dynamo=False, **kwargs)
    return buf.getvalue()
