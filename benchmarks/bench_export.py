"""Export speed per format against the JPEG-encode rate measured in the same process.

The engine encodes every kept face once (112x112, quality 95) and each export then copies those
bytes into its format, so an export is cheap when it writes images much faster than they can be
encoded. For N synthetic face-like crops (smooth shading plus noise, about the size of a real
aligned face JPEG) this prints the encode rate, then for each format the images/s written
(fsync and atomic rename included) and the ratio to the encode rate. RecordIO is timed both
shuffled (the default, through a disk spool) and in input order.

    python benchmarks/bench_export.py --num 5000
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from synthface.export import FORMATS, Sample


def face_like_crops(num: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    """Smooth blobs with mild noise: JPEG sizes close to real aligned faces (~4-6 KB at q95)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    crops = []
    for _ in range(num):
        cx, cy, r = rng.uniform(0.35, 0.65, 2).tolist() + [rng.uniform(0.25, 0.4)]
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        base = rng.uniform(40, 220, 3) * blob[..., None] + rng.uniform(0, 60, 3)
        crops.append(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))
    return crops


def encode(crops: list[np.ndarray], quality: int) -> tuple[list[bytes], float]:
    start = time.perf_counter()
    out = []
    for crop in crops:
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=5000, help="images")
    parser.add_argument("--per-identity", type=int, default=50)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per format")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()

    crops = face_like_crops(args.num)
    jpegs, seconds = encode(crops, args.quality)
    encode_rate = args.num / seconds
    print(f"JPEG encode: {args.num} images in {seconds:.2f} s = {encode_rate:,.0f} images/s "
          f"(mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KB)", flush=True)
    samples = [
        Sample(i // args.per_identity, f"{i // args.per_identity:07d}_{i % args.per_identity:04d}", jpeg,
               {"identity": i // args.per_identity, "image": i % args.per_identity, "seed": i, "filter_cos": 0.5})
        for i, jpeg in enumerate(jpegs)
    ]
    runs = [(name, name, {}) for name in FORMATS] + [("recordio (input order)", "recordio", {"shuffle": False})]
    scratch = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.out))
    results = {"images": args.num, "encode_images_per_s": round(encode_rate)}
    try:
        for label, fmt, options in runs:
            best = float("inf")
            for r in range(args.repeats):
                target = scratch / f"{fmt}-{r}"
                start = time.perf_counter()
                FORMATS[fmt].write(samples, target, **options)
                best = min(best, time.perf_counter() - start)
                shutil.rmtree(target)
            rate = args.num / best
            results[label] = {"images_per_s": round(rate), "ratio_to_encode": round(rate / encode_rate, 2)}
            print(f"{label:>24}: {rate:>9,.0f} images/s = {rate / encode_rate:5.2f} x the encode rate", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
