"""SCRFD face detection on a torch device, batched: insightface's detector without onnxruntime.

The SCRFD ONNX graph runs through synthface's ONNX->torch runner (`synthface.faces.onnx_torch`);
decoding (anchor centres, box and keypoint distances, threshold, NMS) runs in torch on the same
device, many images per forward. Results equal insightface's `SCRFD.detect` on onnxruntime: the
letterbox resize is the same cv2 call on the CPU, and the decoding and the greedy NMS are the same
float32 arithmetic in the same order, so the only differences are the network's own (its sums
taken in another order): the same detections in the same order, boxes and landmarks within 1e-3
px and scores within 1e-5 (tests/test_faces_device_detect.py; measured 1.2e-4 px and 7e-7 on
photos). An anchor scoring within that float error of det_thresh, or a pair overlapping within it
of the NMS threshold, can fall the other way (as between onnxruntime's own CPU and CUDA providers).

Which insightface: the equality holds for insightface 2.1 (checked against it), whose SCRFD sorts
candidates with a stable argsort of -score, as this does: exactly tied scores stay in anchor order.
insightface 0.7.3 (the oldest the package allows) sorts with `scores.argsort()[::-1]`, numpy's
default (unstable) sort reversed, so exactly tied scores come out in another order (typically
reverse anchor order); with it, the only difference is at such exact float32 ties: tied detections
can be listed in another order, and of two tied boxes overlapping above the NMS threshold NMS can
keep the other one. Untied candidates give the same result with either version.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.errors import FileFormatError

log = logging.getLogger(__name__)

#: insightface's SCRFD layouts by output count: (strides, anchors per location, has keypoints).
SCRFD_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
#: SCRFD's input normalisation on 0-255 RGB pixels: (x - mean) / std.
INPUT_MEAN, INPUT_STD = 127.5, 128.0
#: IoU above which NMS drops the lower-scored box (insightface's default).
NMS_THRESH = 0.4
#: Most pairwise-overlap entries (images x candidates^2) one NMS step forms: 2^22, about 90 MB of
#: temporaries at the peak (see `greedy_nms`).
NMS_BUDGET = 1 << 22


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 -> (input height, input width, 3) uint8 and the scale applied: the image
    resized with cv2 (bilinear) to fit `input_size` = (width, height) keeping its aspect ratio,
    placed at the top-left of a black canvas. The same sizes and call as insightface's SCRFD."""
    import cv2

    width, height = input_size
    im_ratio = float(image.shape[0]) / image.shape[1]
    if im_ratio > float(height) / width:
        new_height = height
        new_width = int(new_height / im_ratio)
    else:
        new_width = width
        new_height = int(new_width * im_ratio)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
    return canvas, float(new_height) / image.shape[0]


class ScrfdDetector:
    """An insightface SCRFD detector ONNX (det_10g, scrfd_*_kps) executed in torch on `device`.

    `detect(images, input_size)` letterboxes each image on the CPU (cv2, as insightface does),
    uploads them as uint8, and runs `batch_size` images per forward; everything after the resize
    (normalisation, network, decoding, threshold, NMS) stays on the device, and only the kept boxes
    and keypoints come back. Memory: the network at `batch_size` x input size, plus NMS's pairwise
    overlap temporaries (float32 and boolean, about 21 bytes per pair) for the K candidates above
    `det_thresh` (thousands on noise images: insightface applies no pre-NMS cap, and neither does
    this, so the kept set stays insightface's), bounded by NMS_BUDGET pairs at a time (about 90 MB):
    images are grouped by K within it, and an image with K^2 above it is worked through in blocks.
    A graph that cannot run batches (exported with one image's shapes fixed) is detected on the
    first batch and run one image per forward from then on, with a logged warning.

    Refuses (FileFormatError) a graph that is not SCRFD-shaped, one without keypoint outputs (the
    5 landmarks are what alignment needs) and one with operators the torch runner lacks.
    """

    def __init__(self, path: str | Path, *, device=None, det_thresh: float = 0.5, nms_thresh: float = NMS_THRESH,
                 batch_size: int = 16) -> None:
        import torch

        from synthface.faces.onnx_torch import OnnxModule, read_onnx

        path = Path(path)
        model = read_onnx(path, "Detector")
        n_out = len(model.graph.output)
        if n_out not in SCRFD_LAYOUTS:
            raise FileFormatError(
                f"{path.name} does not look like a SCRFD detector: it has {n_out} outputs, and SCRFD graphs have "
                "6, 9, 10 or 15 (scores, box distances and keypoints per stride). Pass the pack's detector "
                "(det_10g.onnx in buffalo_l, scrfd_10g_bnkps.onnx in antelopev2)."
            )
        self.strides, self.num_anchors, has_kps = SCRFD_LAYOUTS[n_out]
        if not has_kps:
            raise FileFormatError(
                f"{path.name} is a SCRFD detector without keypoint outputs ({n_out} outputs), so its faces cannot be "
                "aligned: the 5 landmarks are what alignment needs. Use a *_kps detector (det_10g.onnx in buffalo_l, "
                "scrfd_10g_bnkps.onnx in antelopev2)."
            )
        init = {t.name for t in model.graph.initializer}
        inp = next(i for i in model.graph.input if i.name not in init)
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise FileFormatError(f"{path.name} takes a rank-{len(dims)} input; a SCRFD detector takes (N, 3, H, W).")
        #: (width, height) the graph is fixed to, or None when its spatial size is dynamic.
        self.static_size = (dims[3], dims[2]) if dims[2] > 0 and dims[3] > 0 else None
        self.path, self.det_thresh, self.nms_thresh, self.batch_size = path, det_thresh, nms_thresh, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._module = OnnxModule(model).eval().to(self.device)
        self._centres: dict[tuple[int, int, int], object] = {}
        #: set once a batched forward failed and one image alone ran: the graph cannot run batches.
        self._one_per_forward = False

    def input_size(self, size: int | tuple[int, int]) -> tuple[int, int]:
        """(width, height) the network runs at when `size` is asked for: the graph's own size when
        it is fixed (as insightface does), else `size` (an int is square)."""
        if self.static_size is not None:
            return self.static_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def detect(self, images: Sequence[np.ndarray], size: int | tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image, (det, kps) as insightface's `SCRFD.detect(bgr, input_size=...)` returns them:
        det float32 (K, 5) rows x1, y1, x2, y2, score in image pixels, kps float32 (K, 5, 2), in
        NMS order (highest score first). images: uint8 RGB (H, W, 3); any mix of shapes."""
        import torch

        input_size = self.input_size(size)
        out = []
        for lo in range(0, len(images), self.batch_size):
            boxes = [letterbox(np.asarray(im), input_size) for im in images[lo : lo + self.batch_size]]
            pixels = torch.from_numpy(np.stack([b for b, _ in boxes])).to(self.device)
            scales = torch.tensor([s for _, s in boxes], dtype=torch.float32, device=self.device)
            with torch.inference_mode():
                out.extend(self._detect_tensor(pixels, scales))
        return out

    def _detect_tensor(self, pixels, scales) -> list[tuple[np.ndarray, np.ndarray]]:
        """(N, H, W, 3) uint8 letterboxed images and their (N,) scales -> kept (det, kps) per image."""
        import torch

        n, height, width = pixels.shape[:3]
        heads = self._heads((pixels.permute(0, 3, 1, 2).float() - INPUT_MEAN) / INPUT_STD, height, width)
        scores, boxes, points = [], [], []
        for level, stride in enumerate(self.strides):
            centres = self._anchor_centres(height // stride, width // stride, stride)
            score, dist, kdist = heads[level]
            dist, kdist = dist * stride, kdist * stride
            scores.append(score[..., 0])
            boxes.append(torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], dim=-1))
            points.append(centres.repeat(1, 5) + kdist)
        scores, boxes, points = torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(points, 1)
        # candidates in insightface's order: score descending, ties in anchor order (stable sort)
        passed = scores >= self.det_thresh
        count = passed.sum(1)
        k = int(count.max())
        order = torch.sort(torch.where(passed, scores, -torch.inf), dim=1, descending=True, stable=True).indices[:, :k]
        scale = scales.reshape(n, 1, 1)
        boxes = torch.gather(boxes, 1, order[..., None].expand(n, k, 4)) / scale
        points = torch.gather(points, 1, order[..., None].expand(n, k, 10)) / scale
        scores = torch.gather(scores, 1, order)
        counts = count.tolist()
        keep = torch.zeros(n, k, dtype=torch.bool, device=scores.device)
        for group in nms_groups(counts, NMS_BUDGET):
            members, span = torch.tensor(group, device=scores.device), max(counts[i] for i in group)
            valid = torch.arange(span, device=scores.device)[None, :] < count[members, None]
            keep[members, :span] = greedy_nms(boxes[members, :span], valid, self.nms_thresh)
        keep = keep.cpu().numpy()
        det = torch.cat([boxes, scores[..., None]], dim=-1).cpu().numpy()
        points = points.cpu().numpy().reshape(n, k, 5, 2)
        return [(det[i][keep[i]], points[i][keep[i]]) for i in range(n)]

    def _heads(self, x, height: int, width: int) -> list[tuple]:
        """The network on (N, 3, H, W) normalised input -> per stride (scores (N, rows, 1), box
        distances (N, rows, 4), keypoint distances (N, rows, 10)) in units of the stride.

        A graph that cannot run a batch (one exported with its reshapes fixed to one image) fails
        on N > 1 images, in the runner or in the output layout; it is then run one image per forward
        from here on, with one warning, and its per-image outputs are stacked."""
        import torch

        n = x.shape[0]
        if n > 1 and not self._one_per_forward:
            try:
                return self._heads_of(self._module(x), n, height, width)
            except torch.cuda.OutOfMemoryError:
                raise
            except (RuntimeError, FileFormatError) as exc:
                batch_error = exc
        per_image = [self._heads_of(self._module(x[i : i + 1]), 1, height, width) for i in range(n)]
        if n > 1 and not self._one_per_forward:
            self._one_per_forward = True
            log.warning("%s does not run batches of images (%s: %s); detecting one image per forward from now on.",
                        self.path.name, type(batch_error).__name__, str(batch_error).splitlines()[0][:200])
        if n == 1:
            return per_image[0]
        return [tuple(torch.cat(parts, 0) for parts in zip(*levels)) for levels in zip(*per_image)]

    def _heads_of(self, outs, n: int, height: int, width: int) -> list[tuple]:
        fmc = len(self.strides)
        if len(outs) != 3 * fmc:
            raise FileFormatError(f"{self.path.name} gave {len(outs)} outputs where its SCRFD layout has {3 * fmc}.")
        heads = []
        for level, stride in enumerate(self.strides):
            rows = (height // stride) * (width // stride) * self.num_anchors
            heads.append(tuple(self._per_image(outs[level + j * fmc], n, rows, w) for j, w in enumerate((1, 4, 10))))
        return heads

    def _per_image(self, out, n: int, rows: int, width: int):
        """A head output as (N, rows, width): rank-3 (batched) graphs give it directly, rank-2 ones
        (det_10g) stack the batch's rows image after image."""
        if out.numel() != n * rows * width:
            raise FileFormatError(
                f"{self.path.name} gave an output of shape {tuple(out.shape)} for {n} image(s), where SCRFD's layout has "
                f"{n} x {rows} x {width} values: it is not a SCRFD graph, or not one the torch runner executes as "
                "onnxruntime does. Run it with runtime='onnxruntime'."
            )
        return out.float().reshape(n, rows, width)

    def _anchor_centres(self, rows: int, cols: int, stride: int):
        """(rows*cols*anchors, 2) x, y pixel centres in SCRFD's row order (y, x, anchor), cached."""
        import torch

        key = (rows, cols, stride)
        if key not in self._centres:
            ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            centres = (torch.stack([xs, ys], dim=-1).reshape(-1, 2) * stride).float()
            self._centres[key] = centres.repeat_interleave(self.num_anchors, dim=0).to(self.device)
        return self._centres[key]


def nms_groups(counts: Sequence[int], budget: int | None = None) -> list[list[int]]:
    """Images (indices into `counts`, their candidate counts) grouped for batched NMS: fewest
    candidates first, each group padded to its largest count with at most `budget` overlap entries
    (group size x count^2; default NMS_BUDGET), an image that alone needs more in a group of its own
    (`greedy_nms` then works through it in blocks); images without candidates are left out.
    One image with thousands of candidates thus does not pad the whole batch to its size."""
    budget = NMS_BUDGET if budget is None else budget
    groups: list[list[int]] = []
    for i in sorted(range(len(counts)), key=counts.__getitem__):
        if counts[i] == 0:
            continue
        if groups and (len(groups[-1]) + 1) * counts[i] ** 2 <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _suppresses(a, area_a, b, area_b, thresh: float):
    """(N, A, B) bool: box a_i would suppress box b_j (IoU > thresh, a NaN overlap included, as in
    insightface's numpy loop), in its float32 operations with the inclusive pixel convention."""
    import torch

    ax1, ay1, ax2, ay2 = (t[:, :, None] for t in a.unbind(-1))
    bx1, by1, bx2, by2 = (t[:, None, :] for t in b.unbind(-1))
    inter = torch.clamp(torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1) + 1, min=0.0)
    inter *= torch.clamp(torch.minimum(ay2, by2) - torch.maximum(ay1, by1) + 1, min=0.0)
    iou = inter / (area_a[:, :, None] + area_b[:, None, :] - inter)
    del inter
    return ~(iou <= thresh)


def _areas(boxes):
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x2 - x1 + 1) * (y2 - y1 + 1)


def _greedy_block(boxes, areas, candidate, thresh: float):
    """Greedy NMS within one block: boxes (N, B, 4) in score order, candidate (N, B) bool (valid
    and not suppressed by an earlier block's kept box) -> keep (N, B) bool. The pairwise
    "would suppress" matrix (earlier box over later box) is formed once, then keep = candidate and
    not any(kept earlier box suppresses it) is iterated to its fixed point, reached after at most B
    rounds (each round fixes at least the next box in order) and in practice after a few. Boxes
    that are not candidates (padding included) never suppress: keep starts as `candidate`."""
    import torch

    b = boxes.shape[1]
    earlier = torch.ones(b, b, dtype=torch.bool, device=boxes.device).triu(1)
    suppresses = _suppresses(boxes, areas, boxes, areas, thresh) & earlier
    keep = candidate
    for _ in range(b):
        new = candidate & ~(suppresses & keep[:, :, None]).any(1)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def greedy_nms(boxes, valid, thresh: float, budget: int | None = None):
    """Greedy NMS as insightface's numpy `SCRFD.nms`, batched: boxes (N, K, 4) sorted by score
    (highest first), valid (N, K) bool -> keep (N, K) bool.

    A box is kept when no kept box before it overlaps it by IoU > thresh, IoU measured with
    insightface's inclusive pixel convention (width x2 - x1 + 1) in the same float32 operations,
    so the kept set is the numpy loop's. Computed without a sequential loop over boxes: see
    `_greedy_block`. Memory: pairwise matrices of N x K x K entries, about 21 bytes per entry at
    the peak (float32 temporaries and boolean matrices; measured on the CPU), when N x K^2 <=
    `budget` entries (default NMS_BUDGET: about 90 MB); beyond it the images are taken one at a time, and one image
    whose K^2 exceeds the budget in blocks of B = sqrt(budget) boxes in score order, each block
    checked against the earlier blocks' kept boxes B at a time, so no pairwise matrix exceeds
    the budget's B x B entries (the exact greedy result, at the cost of a loop over blocks).
    """
    import torch

    budget = NMS_BUDGET if budget is None else budget
    n, k = boxes.shape[:2]
    areas = _areas(boxes)
    if n * k * k <= budget:
        return _greedy_block(boxes, areas, valid, thresh)
    if n > 1:
        return torch.cat([greedy_nms(boxes[i : i + 1], valid[i : i + 1], thresh, budget) for i in range(n)])
    block = max(1, math.isqrt(budget))
    keep = torch.zeros_like(valid)
    kept_boxes, kept_areas = boxes[:, :0], areas[:, :0]
    for lo in range(0, k, block):
        part, part_areas = boxes[:, lo : lo + block], areas[:, lo : lo + block]
        candidate = valid[:, lo : lo + block].clone()
        for start in range(0, kept_boxes.shape[1], block):  # suppressed by an earlier block's kept box
            earlier, earlier_areas = kept_boxes[:, start : start + block], kept_areas[:, start : start + block]
            candidate &= ~_suppresses(earlier, earlier_areas, part, part_areas, thresh).any(1)
        kept = _greedy_block(part, part_areas, candidate, thresh)
        keep[:, lo : lo + block] = kept
        kept_boxes = torch.cat([kept_boxes, part[kept][None]], 1)
        kept_areas = torch.cat([kept_areas, part_areas[kept][None]], 1)
    return keep
