"""Faces per second for each face backend on this machine, each against a baseline run here.

    python benchmarks/bench_faces.py [--repeats 3] [--device cpu|cuda]

- dlib: synthface's batched analyze (detect + 5 points + one descriptor batch) against the usual
  per-face dlib loop (detector, shape predictor, compute_face_descriptor per face) on t1.jpg.
- ArcFace ONNX recogniser: a randomly initialised IResNet-18-sized network (112 x 112 -> 512,
  the ArcFace layout; no pretrained weights are needed to time it) on onnxruntime (baseline)
  and through synthface's ONNX->torch runner.
- alignment: batched torch warp against cv2.warpAffine one face at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import time
import warnings
from pathlib import Path

import numpy as np


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def iresnet18_onnx(path: Path) -> None:
    import torch
    from torch import nn

    def block(cin, cout, stride):
        body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
        )
        short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return body, short

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
            specs = [(64, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2), (512, 512, 1)]
            pairs = [block(*s) for s in specs]
            self.bodies = nn.ModuleList(p[0] for p in pairs)
            self.shorts = nn.ModuleList(p[1] for p in pairs)
            self.bn = nn.BatchNorm2d(512)
            self.fc = nn.Linear(512 * 7 * 7, 512)
            self.features = nn.BatchNorm1d(512)

        def forward(self, x):
            x = self.stem(x)
            for body, short in zip(self.bodies, self.shorts):
                x = body(x) + short(x)
            return self.features(self.fc(torch.flatten(self.bn(x), 1)))

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net().eval(), torch.randn(1, 3, 112, 112), buf, input_names=["input"], output_names=["embedding"],
            dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}}, opset_version=13, dynamo=False,
        )
    path.write_bytes(buf.getvalue())


def main() -> None:
    import dlib
    import torch

    from synthface.faces import get_analyzer, load_image, norm_crop
    from synthface.faces.align import norm_crop_torch
    from synthface.faces.dlib_backend import model_path
    from synthface.faces.onnx_backend import ArcFaceRecognizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="crops per recogniser batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} device={args.device}")

    t1 = load_image(Path(importlib.util.find_spec("insightface").origin).parent / "data" / "images" / "t1.jpg")
    rows = []

    # dlib: synthface vs the plain per-face loop
    analyzer = get_analyzer("dlib")
    n_faces = len(analyzer.analyze([t1], all_faces=True)[0])
    ours = best_of(lambda: analyzer.analyze([t1], all_faces=True), args.repeats)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(model_path("shape5")))
    rec = dlib.face_recognition_model_v1(str(model_path("resnet")))

    def plain_loop():
        for r in det(t1, 1):
            rec.compute_face_descriptor(t1, sp(t1, r))

    base = best_of(plain_loop, args.repeats)
    rows.append(("dlib analyze t1.jpg (HOG+5pt+ResNet)", n_faces / ours, "per-face dlib loop", n_faces / base))
    crops = np.stack([norm_crop(t1, f.kps) for f in analyzer.detect([t1])[0]])
    crops = np.concatenate([crops] * (args.batch // len(crops) + 1))[: args.batch]
    emb = best_of(lambda: analyzer.embed(crops), args.repeats)
    rows.append((f"dlib embed {len(crops)} aligned crops", len(crops) / emb, "", None))

    # ArcFace-layout recogniser: onnxruntime vs the torch runner
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "iresnet18.onnx"
        iresnet18_onnx(path)
        ort_rec = ArcFaceRecognizer(path, batch_size=args.batch)
        torch_rec = ArcFaceRecognizer(path, runtime="torch", device=args.device, batch_size=args.batch)
        t_ort = best_of(lambda: ort_rec(crops), args.repeats)
        t_torch = best_of(lambda: torch_rec(crops), args.repeats)
        agree = float(np.min(np.sum(ort_rec(crops) * torch_rec(crops), axis=1)))
    rows.append((f"IResNet-18 ONNX via torch runner ({args.device})", len(crops) / t_torch, "onnxruntime CPU", len(crops) / t_ort))

    # alignment: batched torch warp vs one cv2 warp per face
    faces = analyzer.detect([t1])[0]
    kps = np.stack([f.kps for f in faces] * (args.batch // len(faces) + 1))[: args.batch]
    images = torch.from_numpy(np.repeat(t1[None], len(kps), 0)).to(args.device)
    kps_t = torch.from_numpy(kps).to(args.device)
    t_warp = best_of(lambda: norm_crop_torch(images, kps_t), args.repeats)
    t_cv2 = best_of(lambda: [norm_crop(t1, k) for k in kps], args.repeats)
    rows.append((f"align {len(kps)} faces, batched torch ({args.device})", len(kps) / t_warp, "cv2 one at a time", len(kps) / t_cv2))

    print(f"{'what':48s} {'faces/s':>9s}  {'baseline':24s} {'faces/s':>9s} {'ratio':>6s}")
    for what, fps, base_name, base_fps in rows:
        extra = f"  {base_name:24s} {base_fps:9.1f} {fps / base_fps:6.2f}x" if base_fps else ""
        print(f"{what:48s} {fps:9.1f}{extra}")
    print(f"torch runner vs onnxruntime: min cosine {agree:.6f}")


if __name__ == "__main__":
    main()
