"""Recogniser training and evaluation speed, and whether the data loader keeps up with the model.

Prints one JSON object: training images/s (IResNet + ArcFace head over `--classes` classes, SGD,
random inputs so the loader is out of the way) for each precision / batch / channels_last /
compile configuration asked for; evaluation images/s (flip-sum embedding: two forward passes per
image); and the loader's images/s on a RecordIO export of face-sized JPEGs with the HSFace
augmentation and with flip only, for each worker count, as a share of the best training rate
(below 1.0 the loader starves the device).

    python benchmarks/bench_fr.py --network r50 --batch 128 --precision bf16 --channels-last   # one GPU
    python benchmarks/bench_fr.py --quick                                                       # CPU smoke
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthface.export import Sample, write_format
from synthface.fr.backbones import BackboneConfig, IResNet
from synthface.fr.data import EpochView, TrainingSet, open_source
from synthface.fr.heads import MarginHead
from synthface.fr.train import DEPTHS, parameter_groups


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(cfg: BackboneConfig, classes: int, batch: int, precision: str, channels_last: bool, compile_: bool,
               steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    backbone = IResNet(cfg).to(device)
    head = MarginHead(classes, cfg.num_features).to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(parameter_groups([backbone, head], 5e-4, False), lr=0.1, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    forward = torch.compile(backbone) if compile_ else backbone
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    compile_start = time.perf_counter()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = head(forward(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - compile_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - start
    row = {"batch": batch, "precision": precision, "channels_last": channels_last, "compile": compile_,
           "images_per_s": round(batch * steps / elapsed, 2), "warmup_s": round(warm_s, 2)}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def eval_rate(cfg: BackboneConfig, batch: int, steps: int, device: torch.device) -> float:
    model = IResNet(cfg).to(device).eval()
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, device=device)
    with torch.inference_mode():
        model(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(x) + model(x.flip(3))
        sync(device)
    return round(batch * steps / (time.perf_counter() - start), 2)


def face_like_export(folder: Path, num: int, size: int = 112) -> Path:
    """`num` smooth-blob JPEGs (about real aligned-face JPEG sizes) in 100 classes, as a RecordIO export."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    samples = []
    for i in range(num):
        cx, cy, r = *rng.uniform(0.35, 0.65, 2), rng.uniform(0.25, 0.4)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = np.clip(rng.uniform(40, 220, 3) * blob[..., None] + rng.uniform(0, 60, 3) + rng.normal(0, 4, (size, size, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=95)
        samples.append(Sample(i % 100, f"{i}", buf.getvalue()))
    return write_format("recordio", samples, folder / "recordio").out_dir


def loader_rate(source, augment: str, workers: int, batch: int, input_size: int) -> float:
    data = TrainingSet(source, augment, input_size, seed=0)
    order = np.random.default_rng(0).permutation(len(data))
    batches = order[: len(order) // batch * batch].reshape(-1, batch).tolist()
    loader = torch.utils.data.DataLoader(EpochView(data, 0), batch_sampler=batches, num_workers=workers)
    start, images = time.perf_counter(), 0
    for x, _ in loader:
        images += len(x)
    return round(images / (time.perf_counter() - start), 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--network", default="r50", choices=list(DEPTHS))
    parser.add_argument("--se", action="store_true", help="the SE variant (HSFace's IR-SE50)")
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[128])
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the best eager configuration")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--loader-images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, min(8, os.cpu_count() or 1)])
    parser.add_argument("--quick", action="store_true", help="tiny model at 32 px, few steps: a CPU smoke run")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from synthface.devices import resolve_device

    device = resolve_device(args.device)
    if args.quick:
        cfg = BackboneConfig(DEPTHS["r18"], (8, 8, 16, 16), 32, 32, args.se, stem_width=8)
        args.classes, args.batch, args.steps, args.warmup, args.loader_images = 100, [16], 3, 1, 128
        args.workers = [0]
    else:
        cfg = BackboneConfig(DEPTHS[args.network], se=args.se)
    precisions = [("bf16" if device.type == "cuda" else "fp32") if p == "auto" else p for p in args.precision]
    rows = [train_rate(cfg, args.classes, b, p, args.channels_last and device.type == "cuda", False, args.steps, args.warmup, device)
            for p, b in itertools.product(dict.fromkeys(precisions), args.batch)]
    if args.compile:
        best = max(rows, key=lambda r: r["images_per_s"])
        rows.append(train_rate(cfg, args.classes, best["batch"], best["precision"], best["channels_last"], True,
                               args.steps, max(args.warmup, 3), device))
    best_train = max(r["images_per_s"] for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        source = open_source(face_like_export(Path(tmp), args.loader_images))
        loader = [{"augment": aug, "workers": w, "images_per_s": (rate := loader_rate(source, aug, w, 64, cfg.input_size)),
                   "share_of_training_rate": round(rate / best_train, 3)}
                  for aug in ("hsface", "flip") for w in args.workers]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "network": cfg.name, "input_size": cfg.input_size, "classes": args.classes, "steps": args.steps,
        "train": rows, "best_train_images_per_s": best_train,
        "eval_images_per_s": eval_rate(cfg, max(args.batch), max(2, args.steps // 3), device),
        "loader": loader,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
