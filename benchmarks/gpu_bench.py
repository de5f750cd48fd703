"""Arc2Face images/s on one GPU: the reference procedure against synthface's engine path.

Full-size Arc2Face-architecture components with random weights (SD 1.5 UNet, CLIP ViT-L/14 text
encoder, SD VAE; speed does not depend on the weights), 512 x 512, 25 DPM-Solver++ steps,
guidance 3. Two ways of rendering, timed in the same process:

- reference: what Arc2Face's README does: one identity per call, 4 images, fp16, stock diffusers
  attention (SDPA), PIL output, no filtering.
- engine: synthface's path: the pipeline as a `synthface.generators` renderer (the engine's: one
  seed per image, uint8 images back on the CPU), many identities per call (a batch-size sweep),
  bf16 and fp16, SDPA, channels_last, torch.compile where the time budget allows, and the filter's
  face analysis on the GPU for every image, through the shipped analyser
  (`InsightFaceAnalyzer(runtime="torch", device=...)`, what a recipe's
  `filtering.analyzer_options = {runtime = "torch", device = "cuda"}` selects): batched SCRFD
  detection at 640 (160 with --tiny), 5-point alignment (`norm_crop_torch`) to 112 x 112 and recognition, both ONNX
  graphs run by synthface's ONNX->torch runner; the cosine to each identity is computed. No real
  weights reach the GPU machine, so the graphs are random ones in the real layouts, exported at run
  time: SCRFD's (`synthface.faces.testing.random_scrfd_bytes`, a small backbone: the detection
  network is cheaper than det_10g's, its decoding and NMS are the real code) and a random
  IResNet-100 (ArcFace's). They time the real code path; what they detect and embed means nothing.

Then, budget permitting, the best engine setting runs through `synthface.engine.run` end to end
(perturbation, crops, JPEG, shard writes, exports) to show what the engine itself costs there.

It prints one JSON object (also written to --out, or to $OUT/gpu_bench.json when OUT is set):
both rates and their ratio, a row per config with peak memory, and the UNet's achieved TFLOP/s
(FLOPs counted with FlopCounterMode on one forward) as a share of the chip's dense peak. A hard
time budget (--budget seconds) skips the configs that would not fit.

    python benchmarks/gpu_bench.py                       # on a CUDA machine; see gpu_suite.sh
    python benchmarks/gpu_bench.py --device cpu --tiny   # tiny components, exercises the logic on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a plain checkout: synthface need not be installed
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from synthface.generators import DTYPES, Optimizations, RenderSettings, build_renderer  # noqa: E402

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' datasheets. First
# matching key wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (reported as "NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
)

def sig(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant figures (tiny runs give tiny numbers; keep them non-zero)."""
    return float(f"{x:.{digits}g}")


def chip_peak_tflops(name: str) -> float | None:
    for key, peak in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


class Budget:
    """Seconds left of a hard wall-clock budget, and whether a step predicted to take `s` fits."""

    def __init__(self, seconds: float, reserve: float):
        self.start, self.seconds, self.reserve = time.perf_counter(), seconds, reserve

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, predicted: float) -> bool:
        return predicted <= self.left() - self.reserve


# --------------------------------------------------------------------------- the analyser


def iresnet(depth: int, widths=(64, 128, 256, 512), embedding: int = 512, input_size: int = 112):
    """A random ArcFace IResNet (pre-activation blocks, PReLU, BN-Dropout-FC-BN head) in eval mode."""
    from torch import nn

    layers = {2: (1, 1, 1, 1), 18: (2, 2, 2, 2), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}[depth]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return self.body(x) + self.short(x)

    blocks, cin = [], widths[0]
    for count, cout in zip(layers, widths):
        for i in range(count):
            blocks.append(Block(cin, cout, 2 if i == 0 else 1))
            cin = cout
    side = input_size // 16
    model = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]),
        *blocks, nn.BatchNorm2d(cin), nn.Flatten(), nn.Linear(cin * side * side, embedding), nn.BatchNorm1d(embedding),
    )
    return model.eval()


def export_onnx(model, path: Path, input_size: int = 112) -> None:
    """ONNX export with a dynamic batch; the TorchScript exporter first (no onnxscript needed)."""
    example = torch.randn(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, example, str(path), input_names=["input.1"], output_names=["embedding"],
                              dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=13, dynamo=False)
        except Exception as legacy_error:  # a torch without the TorchScript exporter
            try:
                torch.onnx.export(model, (example,), str(path), input_names=["input.1"], output_names=["embedding"],
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
            except Exception as dynamo_error:
                raise RuntimeError(f"ONNX export failed: {legacy_error!r}; then {dynamo_error!r}") from None


def build_analyzer(device, dtype, *, tiny: bool, folder: Path):
    """The shipped analyser on `device` (runtime="torch") from random graphs in the real layouts,
    exported to `folder`: a SCRFD detector and an IResNet recogniser (recognition in `dtype`,
    detection in float32, at 640 as shipped or at 160 for the tiny run's 32 x 32 images), and a
    description of it for the JSON."""
    from synthface.faces.onnx_backend import InsightFaceAnalyzer
    from synthface.faces.testing import random_scrfd_bytes

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = iresnet(2, widths=(8, 16, 16, 32)) if tiny else iresnet(100)
    recogniser, detector = folder / "recogniser.onnx", folder / "scrfd.onnx"
    export_onnx(model, recogniser)
    detector.write_bytes(random_scrfd_bytes())
    analyzer = InsightFaceAnalyzer(detector=detector, recognizer=recogniser, runtime="torch", device=device,
                                   det_size=160 if tiny else 640)
    analyzer.recognizer.module.to(dtype=dtype)
    described = {
        "class": "synthface.faces.InsightFaceAnalyzer", "runtime": "torch", "det_size": analyzer.det_size,
        "detector": "random SCRFD-layout graph (synthface.faces.testing.random_scrfd_bytes), float32",
        "recogniser": "IResNet-2 (tiny)" if tiny else "IResNet-100",
        "recogniser_onnx_mib": round(recogniser.stat().st_size / 2**20, 1),
        "runner": "synthface.faces.onnx_torch",
        "weights": "random: times the real code path; detections and embeddings mean nothing",
    }
    return analyzer, described


# --------------------------------------------------------------------------- the two procedures


def random_ids(n: int, seed: int, dim: int = 512) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)


def reference_call(pipe, args, call_index: int) -> int:
    """Arc2Face's README: one identity, 4 images, one generator, PIL images out."""
    out = pipe(id_embeds=random_ids(1, call_index), num_images_per_prompt=args.ref_images,
               num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.size, width=args.size,
               generator=torch.Generator().manual_seed(call_index), output_type="pil")
    return len(out.images)


def engine_call(renderer, analyzer, batch: int, call_index: int) -> int:
    """One engine batch: `batch` identities x 1 image, per-image seeds, uint8 images on the CPU as the
    engine gets them, then face analysis on the GPU and the cosine of each largest face to its identity
    (same-space filtering; an image without a face is what the filter drops)."""
    ids = random_ids(batch, 10_000 + call_index).numpy()
    images = renderer(ids, [call_index * 4096 + i for i in range(batch)])
    found = [(faces[0].embedding, i) for i, faces in enumerate(analyzer.analyze(images)) if faces]
    _ = [float(embedding @ ids[i]) for embedding, i in found]
    return batch


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, *, min_seconds: float, max_calls: int) -> dict:
    """One warm-up call, then calls until `min_seconds` or `max_calls`; images/s and peak memory."""
    start = time.perf_counter()
    fn(0)
    sync(device)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images, calls, start = 0, 0, time.perf_counter()
    while calls < max_calls and (calls == 0 or time.perf_counter() - start < min_seconds):
        images += fn(calls + 1)
        calls += 1
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": sig(images / seconds),
        "seconds_per_call": sig(seconds / calls),
        "calls": calls,
        "warmup_s": round(warmup, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


# --------------------------------------------------------------------------- settings


def engine_renderer(pipe, args, dtype: str | None = None, channels_last: bool | None = None, compile: bool = False):
    """`pipe` as synthface's renderer in one engine setting (SDPA, dtype, memory layout, compile);
    with neither dtype nor channels_last it is used as it stands (a compiled UNet stays compiled)."""
    optimizations = None if channels_last is None else Optimizations(channels_last=channels_last, compile=compile)
    return build_renderer(pipe, settings=RenderSettings(steps=args.steps, guidance=args.guidance, resolution=args.size),
                          dtype=dtype and DTYPES[dtype], optimizations=optimizations)


def unet_flops(pipe, batch: int, size: int) -> int:
    """FLOPs of one UNet forward at `batch` latents (count the CFG pair as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, device = pipe.unet, pipe._execution_device
    side = size // pipe.vae_scale_factor
    latents = torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=unet.dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latents, torch.tensor(500, device=device), encoder_hidden_states=context, return_dict=False)
    return int(counter.get_total_flops())


def unet_forward_rate(pipe, batch: int, size: int, device, repeats: int) -> float:
    """Seconds per UNet forward at `batch` latents, alone (no scheduler, VAE or recogniser)."""
    unet = pipe.unet
    side = size // pipe.vae_scale_factor
    latents = torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=unet.dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    # the pipeline's own timestep tensor, so a compiled UNet sees the inputs it was compiled for
    t = pipe.scheduler.timesteps[0] if pipe.scheduler.timesteps is not None else torch.tensor(500, device=device)
    with torch.no_grad():
        unet(latents, t, encoder_hidden_states=context, return_dict=False)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            unet(latents, t, encoder_hidden_states=context, return_dict=False)
        sync(device)
    return (time.perf_counter() - start) / repeats


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random components, 2 steps, small batches")
    parser.add_argument("--budget", type=float, default=420.0, help="hard wall-clock budget in seconds")
    parser.add_argument("--batches", default=None, help="engine batch sizes, e.g. 8,16,32,64")
    parser.add_argument("--dtypes", default=None, help="engine dtypes to sweep, e.g. bf16,fp16")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile config")
    parser.add_argument("--no-engine-run", action="store_true", help="skip the end-to-end synthface.engine run")
    parser.add_argument("--min-seconds", type=float, default=None, help="time each config at least this long")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: $OUT/gpu_bench.json if set)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.tiny:
        args.steps, args.size, args.ref_images = 2, 32, 4
        args.batches = args.batches or "2,4"
        args.dtypes = args.dtypes or ("fp32" if args.device.type == "cpu" else "bf16,fp16")
        args.min_seconds = 0.0 if args.min_seconds is None else args.min_seconds
        args.ref_dtype = "fp32" if args.device.type == "cpu" else "fp16"
    else:
        args.steps, args.size, args.ref_images = 25, 512, 4
        args.batches = args.batches or "8,16,32,64"
        args.dtypes = args.dtypes or "bf16,fp16"
        args.min_seconds = 4.0 if args.min_seconds is None else args.min_seconds
        args.ref_dtype = "fp16"
    args.guidance = 3.0
    args.batches = [int(b) for b in args.batches.split(",")]
    args.dtypes = args.dtypes.split(",")
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / "gpu_bench.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        return bench(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bench(args, scratch: Path) -> dict:
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device is visible to torch "
                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run it on a GPU machine, "
                 "or pass --device cpu --tiny to exercise the logic on CPU.")
    budget = Budget(args.budget, reserve=5.0 if args.tiny else 15.0)
    from synthface.generators.arc2face.testing import full_size_arc2face_pipeline
    from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline

    log = lambda msg: print(f"[{budget.elapsed():6.1f} s] {msg}", flush=True)  # noqa: E731
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = chip_peak_tflops(name) if device.type == "cuda" else None
    result: dict = {
        "benchmark": "arc2face_gpu", "device": name, "peak_tflops_dense_bf16": peak, "torch": torch.__version__,
        "tiny": args.tiny, "size": args.size, "steps": args.steps, "guidance": args.guidance, "budget_s": args.budget,
        "skipped": [], "complete": False,
    }
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # "cast with to()" notes on every dtype switch

    def save() -> None:  # after every stage, so a run killed at its time limit still leaves its numbers
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))

    log(f"building {'tiny' if args.tiny else 'full-size'} components on {name}")
    if args.tiny:
        pipe = tiny_arc2face_pipeline().to(device=device, dtype=DTYPES[args.ref_dtype])
    else:
        pipe = full_size_arc2face_pipeline(device=device, dtype=DTYPES[args.ref_dtype])
    pipe.set_progress_bar_config(disable=True)
    analyzer, result["analyzer"] = build_analyzer(device, DTYPES[args.ref_dtype], tiny=args.tiny, folder=scratch)
    recogniser = analyzer.recognizer.module
    # FLOPs depend on shapes only: count them once, on the eager UNet, before anything is compiled.
    flops_cfg_pair = unet_flops(pipe, 2, args.size)
    log(f"components ready; UNet forward on a CFG pair: {flops_cfg_pair / 1e9:.4g} GFLOP")

    # (a) the reference procedure ------------------------------------------------------------
    ref = measure(lambda i: reference_call(pipe, args, i), device, min_seconds=args.min_seconds, max_calls=8)
    ref.update(dtype=args.ref_dtype, images_per_call=args.ref_images, identities_per_call=1)
    result["reference"] = ref
    log(f"reference: {ref['images_per_s']:.2f} images/s")
    sec_per_image = 1.0 / ref["images_per_s"]  # a pessimistic predictor for the engine configs
    save()
    if device.type == "cuda":  # engine settings only: the reference ran with torch's defaults
        torch.backends.cudnn.benchmark = True

    # (b) the engine path: sweep ---------------------------------------------------------------
    rows: list[dict] = []

    def try_config(label: str, dtype: str, batch: int, channels_last: bool, compiled: bool, extra_s: float = 0.0):
        calls = 2 + (0 if args.min_seconds == 0 else 1)
        predicted = extra_s + calls * batch * sec_per_image
        if not budget.fits(predicted):
            result["skipped"].append(f"{label} (predicted {predicted:.0f} s, {budget.left():.0f} s left)")
            log(f"skip {label}: predicted {predicted:.0f} s")
            return None
        # a compiled config was set up by the caller: touching the UNet again would recompile it
        renderer = engine_renderer(pipe, args) if compiled else engine_renderer(pipe, args, dtype, channels_last)
        recogniser.to(dtype=DTYPES[dtype])
        try:
            row = measure(lambda i: engine_call(renderer, analyzer, batch, i), device,
                          min_seconds=args.min_seconds, max_calls=6)
        except Exception as exc:  # OOM or a compile failure: record it and go on
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["skipped"].append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            log(f"failed {label}: {exc!r}"[:300])
            return None
        row.update(label=label, dtype=dtype, batch=batch, channels_last=channels_last, compiled=compiled, attention="sdpa")
        rows.append(row)
        result["engine_configs"] = rows
        save()
        log(f"{label}: {row['images_per_s']:.2f} images/s, peak {row['peak_gib']} GiB")
        return row

    first = args.dtypes[0]
    for batch in args.batches:
        try_config(f"{first} b{batch}", first, batch, False, False)
    best = max(rows, key=lambda r: r["images_per_s"], default=None)
    if best is not None:
        for dtype in args.dtypes[1:]:
            try_config(f"{dtype} b{best['batch']}", dtype, best["batch"], False, False)
        best = max(rows, key=lambda r: r["images_per_s"])
        try_config(f"{best['dtype']} b{best['batch']} channels_last", best["dtype"], best["batch"], True, False)
        best = max(rows, key=lambda r: r["images_per_s"])
        compile_ok = device.type == "cuda" and not args.no_compile
        if compile_ok:
            # Compiling SD 1.5's UNet takes one to three minutes; predict the worst case.
            eager = best
            # synthface's switch: UNet.compile(fullgraph=True), in place, at the best eager setting
            engine_renderer(pipe, args, eager["dtype"], eager["channels_last"], compile=True)
            row = try_config(f"{eager['label']} compiled", eager["dtype"], eager["batch"], eager["channels_last"], True,
                             extra_s=180.0)
            if row is None or row["images_per_s"] <= eager["images_per_s"]:
                pipe.unet._compiled_call_impl = None  # back to eager (what nn.Module.compile set)
            if row is not None:
                gain = 1 / eager["images_per_s"] - 1 / row["images_per_s"]  # seconds saved per image
                result["compile"] = {
                    "speedup": sig(row["images_per_s"] / eager["images_per_s"]),
                    "compile_s": row["warmup_s"],
                    "break_even_images": round(row["warmup_s"] / gain) if gain > 0 else None,
                }
        else:
            result["skipped"].append("torch.compile (CPU run or --no-compile)")
    result["engine_configs"] = rows
    if not rows:
        raise SystemExit("gpu_bench: no engine config fitted the budget; raise --budget")
    best = max(rows, key=lambda r: r["images_per_s"])
    result["engine"] = best
    result["engine_over_reference"] = round(best["images_per_s"] / ref["images_per_s"], 3)
    log(f"best engine config {best['label']}: {best['images_per_s']:.2f} images/s, "
        f"{result['engine_over_reference']:.2f}x the reference")

    # UNet utilisation at the best setting ----------------------------------------------------------
    # a compiled best is how the pipeline stands (compiling came last); an eager one is set again
    renderer = engine_renderer(pipe, args) if best["compiled"] else \
        engine_renderer(pipe, args, best["dtype"], best["channels_last"])
    recogniser.to(dtype=DTYPES[best["dtype"]])
    per_image = flops_cfg_pair * args.steps  # CFG: every step runs the UNet on a pair of latents
    # pipeline_*: UNet FLOPs delivered per second of the whole engine step (VAE, text encoder,
    # scheduler and recognition time count against it); alone_*: the UNet by itself at the same batch.
    unet = {"flops_per_forward_cfg_pair": flops_cfg_pair, "tflop_per_image": sig(per_image / 1e12),
            "pipeline_tflops": sig(best["images_per_s"] * per_image / 1e12)}
    if budget.fits(10.0):
        seconds = unet_forward_rate(pipe, 2 * best["batch"], args.size, device, repeats=3 if args.tiny else 10)
        unet["alone_tflops"] = sig(flops_cfg_pair * best["batch"] / seconds / 1e12)
        unet["alone_batch"] = 2 * best["batch"]
    else:
        result["skipped"].append("UNet-alone timing (budget)")
    if peak:
        unet["pipeline_share_of_peak"] = sig(unet["pipeline_tflops"] / peak, 3)
        if "alone_tflops" in unet:
            unet["alone_share_of_peak"] = sig(unet["alone_tflops"] / peak, 3)
    result["unet"] = unet
    save()
    log(f"UNet: {unet}")

    # the real engine, end to end, at the best setting ----------------------------------------------
    if not args.no_engine_run:
        result["engine_run"] = engine_end_to_end(renderer, analyzer, args, best, budget, device, scratch, result)

    result["elapsed_s"] = round(budget.elapsed(), 1)
    result["complete"] = True
    save()
    print(json.dumps(result, indent=2))
    return result


def engine_end_to_end(renderer, analyzer, args, best, budget, device, scratch, result) -> dict | None:
    """`synthface.engine.run` with the best setting's renderer and the analyser on the GPU, at the best batch."""
    from bench_engine import timed_run

    from synthface.recipe import load_recipe

    calls = 4
    predicted = calls * best["batch"] / best["images_per_s"] + 20.0
    if not budget.fits(predicted):
        result["skipped"].append(f"engine end-to-end run (predicted {predicted:.0f} s, {budget.left():.0f} s left)")
        return None
    batch = best["batch"]
    recipe = load_recipe(REPO / "pipelines" / "smoke.toml", [
        f"identities.count={batch * calls // 2}", "variation.images_per_identity=2", f"generation.batch_size={batch}",
        f"generation.steps={args.steps}", f"compute.shard_size={batch // 2}", 'export.formats=["recordio"]',
    ])

    try:
        # the first shard includes the warm-up of this batch shape; compiled graphs are already warm
        row = timed_run(recipe, renderer, analyzer=analyzer, sync=lambda: sync(device), scratch=scratch)
    except Exception as exc:
        result["skipped"].append(f"engine end-to-end run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return None
    row.update(label=best["label"], batch=batch,
               over_reference=sig(row["images_per_s"] / result["reference"]["images_per_s"]),
               shard_over_reference=sig(row["shard_images_per_s"] / result["reference"]["images_per_s"]))
    print(f"engine end to end: {row}", flush=True)
    return row


if __name__ == "__main__":
    main()
