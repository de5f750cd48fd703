"""Vec2Face rendering speed: the pipeline against a bare forward loop of the same batches.

For each precision and batch size: images/s of `Vec2FacePipeline.__call__` (input checks, per-image
mask draws from one generator per image, forward, uint8 conversion) and of a bare loop calling the
generator module on pre-drawn masks (the time inside the model), and their ratio (goal on CPU: the
pipeline within 10 % of the bare loop). Weights are the deterministic test weights at full size
(random: the numbers measure speed only, the images are not faces). On CUDA it also reports peak
memory and the share of the chip's dense bf16 peak (`--peak-tflops`), with SDPA and optionally
torch.compile. Prints one JSON object (and writes it to `--out`).

    python benchmarks/bench_vec2face.py --batch 1 4 8 --precision fp32 bf16          # CPU
    python benchmarks/bench_vec2face.py --device cuda --batch 64 256 1024 --precision bf16 fp16 --compile
    python benchmarks/bench_vec2face.py --tiny --batch 2 --repeats 1                  # smoke
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from synthface.generators.vec2face.testing import full_size_vec2face_pipeline
from synthface.generators.vec2face.tiny import tiny_vec2face_pipeline

#: Multiply-accumulates x 2 per image of the published model (VEC2FACE.md: 49.2 GFLOP).
FLOP_PER_IMAGE = 49.2e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(first, second, repeats: int, device: torch.device) -> tuple[float, float]:
    """Fastest seconds per call of each, alternating them (shared CPUs: the minimum is the
    least-disturbed run, and alternation exposes both to the same load)."""
    first(), second()  # warm-up (and compilation)
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def measure(pipe, batch: int, repeats: int, device: torch.device, peak_tflops: float | None) -> dict:
    ids = torch.nn.functional.normalize(torch.randn(batch, 512, generator=torch.Generator().manual_seed(0)), dim=1)

    def pipeline_call():
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        pipe(ids, generator=gens, output_type="np")

    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    _, mask, drop = pipe.draw_masks(batch, pipe.check_inputs(ids, 1, gens, None, 22.0, "per_image", None, None,
                                                             "np")[1], gens, "per_image", device)
    rep = (ids * 22).to(device, pipe.vec2face.dtype)

    def bare_forward():
        with torch.no_grad():
            pipe.vec2face(rep, mask, drop)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model_s, pipe_s = timed_pair(bare_forward, pipeline_call, repeats, device)
    row = {"batch": batch, "pipeline_images_per_s": batch / pipe_s, "model_images_per_s": batch / model_s,
           "pipeline_over_model": model_s / pipe_s}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if peak_tflops:
            row["share_of_peak"] = FLOP_PER_IMAGE * batch / model_s / (peak_tflops * 1e12)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", default=None, choices=["exact", "sdpa"],
                        help="default: exact on CPU, sdpa on CUDA")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the generator")
    parser.add_argument("--tiny", action="store_true", help="the tiny model (a smoke run of this script)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, for the share")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    attention = args.attention or ("sdpa" if device.type == "cuda" else "exact")
    rows = []
    for precision in args.precision:
        build = tiny_vec2face_pipeline if args.tiny else full_size_vec2face_pipeline
        pipe = build(device=device, dtype=DTYPES[precision]).optimize(attention=attention)
        for compiled in ([False, True] if args.compile else [False]):
            if compiled:
                pipe.vec2face.compile()
            for batch in args.batch:
                row = measure(pipe, batch, args.repeats, device, args.peak_tflops)
                rows.append({"precision": precision, "compile": compiled, "attention": attention, **row})
                print(json.dumps(rows[-1]), flush=True)
        del pipe
    result = {"device": str(device), "tiny": args.tiny, "threads": torch.get_num_threads(),
              "flop_per_image": FLOP_PER_IMAGE, "rows": rows,
              "note": "random deterministic weights: speed only, the images are not faces"}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
