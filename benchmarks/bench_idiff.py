"""IDiff-Face sampling speed: the pipeline against bare loops of the same UNet calls, and images/s.

Weights are the deterministic test weights at the published size (`idiff.testing`: random, so the
numbers measure speed only; the images are not faces), or the tiny models with --tiny. Every
comparison runs both sides in this process, alternating them (ABBA order) after a shared warm-up,
and reports the median of the repeats (the minimum too) and the ratio of the medians.

Ratios (the default; issue #24's CPU goals, batch 4, a few DDIM steps):

- (a) `pipeline`: `IDiffFacePipeline(sampler="cfg", rng="per_image")` against a bare loop written
  here: the same per-image noise, then per step the same forward of 2B rows (conditional rows, then
  the empty context) and the DDIM update as coefficients; for output_type "latent" and "pt" (the
  bare "pt" adds the same quantised decode, clamp and 128 -> 112 resize). Goal: pipeline / bare
  <= 1.05. The outputs of both are compared (max_abs_diff), so the two do the same work. On the CPU
  hooks also time the model calls (UNet, VQ decoder) inside each call: other sessions' load moves
  whole calls on a shared 2-core box by 2-4x, far more than 5 %, so the headline ratio there is the
  model time shared by both sides plus what each adds around it (`summary`); wall and CPU-time
  ratios are reported beside it.
- (b) `two_stage`: UIFace's sampler (`sampler="uiface"`): UNet forwards per step and rows per forward,
  counted on the UNet (goal: one forward of 2B rows per step, not two), and its time against the same
  pipeline with `forward_pair` replaced by two separate UNet calls of B rows per step (pass A, then
  pass B reading A's stored self-attention logits: the published code's structure; its latents are
  compared too).
- (c) `rng`: per-image generators against the global one ("reference"): the draws alone (starting
  noise, and the per-step noise of eta > 0) as a share of a 50-step call, and whole pipeline calls
  (eta = 1, so every step draws) in both modes.

Sweep (--sweep, what benchmarks/gpu_idiff.sh runs on CUDA): images/s of whole pipeline calls
(output_type "pt": decoded 112 x 112 images on the CPU, as the engine gets them) at 50 steps, for
sampler "cfg" and "uiface", a batch sweep, fp32 and bf16, with peak memory and the achieved TFLOP/s
(UNet and decoder FLOPs counted with FlopCounterMode), then, as the time budget allows, (a)-(c) at
50 steps on the device. A hard budget (--budget) skips what would not fit; the JSON is rewritten
after every row, so a run killed at its limit keeps what finished.

    python benchmarks/bench_idiff.py                      # CPU ratios, full size (~3 min on a quiet 2-core box)
    python benchmarks/bench_idiff.py --tiny               # plumbing run, seconds
    python benchmarks/bench_idiff.py --sweep --device cuda --out gpu_idiff.json    # see gpu_idiff.sh
    python benchmarks/bench_idiff.py --sweep --tiny --steps 3 --batch 1 2          # the sweep's logic on CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a plain checkout: synthface need not be installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from synthface.errors import DeviceMemoryError  # noqa: E402
from synthface.generators.idiff.attention import restandardised  # noqa: E402
from synthface.generators.idiff.autoencoder import decode_latents  # noqa: E402
from synthface.generators.idiff.pipeline import IMAGE_SIZE, IDiffFacePipeline  # noqa: E402
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler, draw_noise  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: IDIFF.md's costs (FlopCounter, 2 x MACs): one UNet row, one 128 x 128 decode (the sweep measures its own).
UNET_GFLOP, DECODE_GFLOP = 13.95, 161.3
GUIDANCE = 2.0  # the published cfg_scale 1
STAGE_THRESHOLD = 500  # UIFace's published stage split
TINY_SIDE = 8  # tiny latents (8 x 8 -> 32 px decoded)


# --------------------------------------------------------------------------- models and helpers


def build_cpu_pipeline(tiny: bool) -> IDiffFacePipeline:
    """The full-size (or tiny) pipeline with deterministic weights, fp32 on the CPU."""
    if tiny:
        from synthface.generators.idiff.tiny import tiny_unet, tiny_vqmodel

        pipe = IDiffFacePipeline(tiny_unet(), tiny_vqmodel(), IDiffDDIMScheduler(), latent_size=TINY_SIDE)
    else:
        from synthface.generators.idiff.testing import full_size_unet, full_size_vqmodel

        pipe = IDiffFacePipeline(full_size_unet(), full_size_vqmodel(), IDiffDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def on_device(pipe: IDiffFacePipeline, device: torch.device, dtype: torch.dtype) -> IDiffFacePipeline:
    """A copy of `pipe` on `device` in `dtype` (the CPU original stays fp32)."""
    if device.type == "cpu" and dtype == torch.float32:
        return pipe
    moved = IDiffFacePipeline(copy.deepcopy(pipe.unet).to(device, dtype), copy.deepcopy(pipe.vqvae).to(device, dtype),
                              IDiffDDIMScheduler.from_config(pipe.scheduler.config),
                              latent_size=pipe.config.latent_size)
    moved.set_progress_bar_config(disable=True)
    return moved


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 512, generator=gen), dim=1)


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    """One CPU generator per image, as the engine seeds them."""
    return [torch.Generator().manual_seed(seed * 4096 + i) for i in range(n)]


def visited(steps: int) -> int:
    """Timesteps a DDIM run of `steps` visits (UNet evaluations of each pass)."""
    return len(IDiffDDIMScheduler.timestep_list(steps))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


class ModelClock:
    """Wall seconds spent inside the given modules' forwards (hooks; CPU runs only: on a GPU the
    kernels run asynchronously), so a call's time splits into model time and everything else."""

    def __init__(self, *modules):
        self.modules, self.seconds, self._start = modules, 0.0, 0.0

    @contextmanager
    def running(self):
        def pre(module, args):
            self._start = time.perf_counter()

        def post(module, args, output):
            self.seconds += time.perf_counter() - self._start
        hooks = [h for m in self.modules for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()


def alternate(fns: dict, repeats: int, device: torch.device, warmup: int = 0,
              clock: ModelClock | None = None) -> tuple[dict, dict]:
    """Time each call in `fns` over `repeats` rounds in ABBA order (shared CPUs: both sides see the same
    drift). Returns ({"wall": {name: [s]}, "cpu": {name: [s]}[, "model": {name: [s]}]}, {name: last
    output}); "cpu" is this process's CPU time (all its threads), "model" the wall time inside `clock`'s
    modules."""
    names = list(fns)
    last = {}
    for _ in range(warmup):
        for name in names:
            last[name] = fns[name]()
    clocks = ("wall", "cpu", "model") if clock is not None else ("wall", "cpu")
    seconds = {c: {name: [] for name in names} for c in clocks}
    with clock.running() if clock is not None else nullcontext():
        for i in range(repeats):
            for name in (names if i % 2 == 0 else names[::-1]):
                sync(device)
                start, cpu, model = time.perf_counter(), time.process_time(), clock.seconds if clock else 0.0
                last[name] = fns[name]()
                sync(device)
                seconds["wall"][name].append(time.perf_counter() - start)
                seconds["cpu"][name].append(time.process_time() - cpu)
                if clock is not None:
                    seconds["model"][name].append(clock.seconds - model)
    return seconds, last


def summary(seconds: dict, numerator: str, denominator: str, device: torch.device, goal: float | None = None) -> dict:
    """For wall and CPU time: medians, minima, the raw timings, and numerator / denominator three ways:
    of the medians, of the minima, and the median of the per-round ratios (each round runs both sides
    back to back). With model time ("model", CPU only): each side's median time outside the model
    calls, and the ratio with the model time shared, (M + outside_num) / (M + outside_den), M the
    median model time of all calls: the same model work, plus what each side adds around it.

    The headline ratio (and the goal): on a GPU, wall time; on the CPU, the shared-model ratio when
    measured (other sessions' load moves whole calls on a shared box by far more than 5 %, and moves
    the model calls of both sides alike), else CPU time."""
    key = f"{numerator}_over_{denominator}"
    row: dict = {}
    for clock in ("wall", "cpu"):
        times = seconds[clock]
        med = {k: statistics.median(v) for k, v in times.items()}
        pairs = [a / b for a, b in zip(times[numerator], times[denominator])]
        row[clock] = {"median_s": {k: sig(v) for k, v in med.items()},
                      "min_s": {k: sig(min(v)) for k, v in times.items()},
                      "seconds": {k: [sig(x) for x in v] for k, v in times.items()},
                      key: sig(med[numerator] / med[denominator]),
                      f"{key}_of_minima": sig(min(times[numerator]) / min(times[denominator])),
                      f"{key}_per_round_median": sig(statistics.median(pairs))}
    judged = "wall" if device.type == "cuda" else "cpu"
    row[key] = row[judged][key]
    if "model" in seconds:
        model = seconds["model"]
        outside = {k: [w - m for w, m in zip(seconds["wall"][k], model[k])] for k in model}
        shared = statistics.median(model[numerator] + model[denominator])
        out = {k: statistics.median(v) for k, v in outside.items()}
        row["model"] = {"median_model_s": sig(shared), "model_s": {k: [sig(x) for x in v] for k, v in model.items()},
                        "outside_model_median_s": {k: sig(v, 3) for k, v in out.items()},
                        "outside_model_s": {k: [sig(x, 3) for x in v] for k, v in outside.items()},
                        key: sig((shared + out[numerator]) / (shared + out[denominator]))}
        if device.type != "cuda":
            judged = "model"
            row[key] = row["model"][key]
    row["judged_on"] = {"wall": "wall time", "cpu": "CPU time", "model": "shared model time + each side's rest"}[judged]
    if goal is not None:
        row["goal"] = f"{numerator}/{denominator} <= {goal}"
        row["meets_goal"] = bool(row[key] <= goal)
    return row


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return sig(float((a.float() - b.float()).abs().max()), 3)


@contextmanager
def patched(obj, name: str, value):
    """Set an instance attribute (shadowing a method) for the duration, then put back what was there."""
    missing = object()
    before = obj.__dict__.get(name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if before is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, before)


# --------------------------------------------------------------------------- (a) the bare CFG loop


def ddim_coefficients(steps: int) -> list[tuple[int, float, float, float, float]]:
    """Per visited step (t, sqrt ab_t, sqrt(1 - ab_t), sqrt ab_prev, sqrt(1 - ab_prev)), with the
    published shifted table: ab_prev = ab[t - skip - 1] for t - skip >= 1, else 1."""
    ab = IDiffDDIMScheduler().alphas_cumprod.double()
    skip = 1000 // steps
    rows = []
    for t in IDiffDDIMScheduler.timestep_list(steps):
        a_t = float(ab[t])
        a_prev = float(ab[t - skip - 1]) if t - skip >= 1 else 1.0
        rows.append((t, a_t ** 0.5, (1 - a_t) ** 0.5, a_prev ** 0.5, (1 - a_prev) ** 0.5))
    return rows


@torch.no_grad()
def bare_cfg(unet, vqvae, ids: torch.Tensor, steps: int, side: int, device: torch.device, seed: int = 0):
    """The same work as the "cfg" pipeline call, written out: per-image noise, one forward of 2B rows
    per step (conditional, then empty), guidance, the DDIM update (eta 0); with `vqvae`, the decode."""
    dtype = unet.dtype
    n = ids.shape[0]
    x = torch.stack([torch.randn(3, side, side, generator=g) for g in generators(n, seed)]).to(device)
    context = ids.to(device, dtype)
    context2 = torch.cat([context, context])
    empty = torch.arange(2 * n, device=device) >= n
    s = GUIDANCE - 1.0
    for t, a, b, a_prev, b_prev in ddim_coefficients(steps):
        eps_c, eps_u = unet(torch.cat([x, x]).to(dtype), t, context2, empty=empty).float().chunk(2)
        eps = (1 + s) * eps_c - s * eps_u
        x = a_prev * ((x - b * eps) / a) + b_prev * eps
    if vqvae is None:
        return x.cpu()
    raw = decode_latents(vqvae, x.to(vqvae.dtype)).float()
    return F.interpolate((raw.clamp(-1, 1) + 1) / 2, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                         align_corners=False, antialias=False).cpu()


def pipeline_cfg(pipe, ids, steps, output_type, seed: int = 0, **kwargs):
    return pipe(ids, sampler="cfg", num_inference_steps=steps, guidance_scale=GUIDANCE, rng="per_image",
                generator=generators(ids.shape[0], seed), output_type=output_type, **kwargs).images


def part_pipeline(pipe, batch: int, steps: int, repeats: int, device, output_types=("latent", "pt"),
                  warmup: int = 0) -> dict:
    """(a): pipeline / bare loop for each output type."""
    ids = random_ids(batch)
    side = pipe.config.latent_size
    rows = {}
    for output_type in output_types:
        vq = pipe.vqvae if output_type == "pt" else None
        clock = ModelClock(pipe.unet, pipe.vqvae.decoder) if device.type == "cpu" else None
        seconds, last = alternate({
            "pipeline": lambda: pipeline_cfg(pipe, ids, steps, output_type),
            "bare": lambda: bare_cfg(pipe.unet, vq, ids, steps, side, device),
        }, repeats, device, warmup, clock)
        row = summary(seconds, "pipeline", "bare", device, goal=1.05)
        row["max_abs_diff"] = max_abs_diff(last["pipeline"], last["bare"])
        rows[output_type] = row
        print(f"(a) cfg {output_type}: {json.dumps(row)}", flush=True)
    return {"sampler": "cfg", "batch": batch, "steps": steps, "visited_steps": visited(steps),
            "guidance_scale": GUIDANCE, "rng": "per_image", **rows}


# --------------------------------------------------------------------------- (b) the two-stage sampler


def two_call_forward_pair(unet):
    """A drop-in for `unet.forward_pair` making two separate UNet calls of B rows: pass A (empty
    context) storing each attention block's self and cross logits, then pass B (the identity where
    `use_context`) applying softmax(A's self logits) to its own values and, with `restandardise`,
    re-standardising its cross logits towards A's. The same maths as the batched forward."""
    blocks = unet.attention_blocks()

    def pass_a(stored: dict, block):
        def self_attention(h, pair):
            logits = stored["self"] = block.self_attention.logits(h, h)
            return block.self_attention.attend(logits, h)

        def cross_attention(h, tokens, pair):
            logits = stored["cross"] = block.cross_attention.logits(h, tokens)
            return block.cross_attention.attend(logits, tokens)
        return self_attention, cross_attention

    def pass_b(stored: dict, block, restandardise: bool, cross: list | None):
        def self_attention(h, pair):
            return block.self_attention.attend(stored["self"], h)

        def cross_attention(h, tokens, pair):
            logits = block.cross_attention.logits(h, tokens)
            if restandardise:
                logits = restandardised(logits.float(), stored["cross"].float()).to(logits.dtype)
            if cross is not None:
                cross.append(logits)
            return block.cross_attention.attend(logits, tokens)
        return self_attention, cross_attention

    @contextmanager
    def attention_as(pairs):
        with contextmanager_stack([(blk, "_self", fns[0]) for blk, fns in zip(blocks, pairs)]
                                  + [(blk, "_cross", fns[1]) for blk, fns in zip(blocks, pairs)]):
            yield

    def forward_pair(sample, timestep, context, *, use_context, restandardise, return_cross=False):
        batch = sample.shape[0]
        use = torch.as_tensor(use_context, device=sample.device)
        use = use.expand(batch) if use.ndim == 0 else use
        stored = [{} for _ in blocks]
        cross = [] if return_cross else None
        with attention_as([pass_a(s, blk) for s, blk in zip(stored, blocks)]):
            eps_a = unet(sample, timestep, None)
        with attention_as([pass_b(s, blk, restandardise, cross) for s, blk in zip(stored, blocks)]):
            eps_b = unet(sample, timestep, context, empty=~use)
        return eps_a, eps_b, cross

    return forward_pair


@contextmanager
def contextmanager_stack(patches):
    """`patched` for each (obj, name, value), undone in reverse order."""
    if not patches:
        yield
        return
    (obj, name, value), rest = patches[0], patches[1:]
    with patched(obj, name, value), contextmanager_stack(rest):
        yield


class ForwardCounter:
    """Counts UNet network passes (a hook on its first conv: every forward, whatever the entry point)
    with the rows of each, and calls of `forward` (module calls) and `forward_pair`."""

    def __init__(self, unet):
        self.unet, self.rows, self.forward_calls, self.pair_calls = unet, [], 0, 0

    @contextmanager
    def counting(self):
        unet = self.unet
        hooks = [unet.image_proj.register_forward_pre_hook(lambda m, args: self.rows.append(args[0].shape[0])),
                 unet.register_forward_pre_hook(lambda m, args, kwargs: self._forward(), with_kwargs=True)]
        inner = unet.forward_pair  # the batched method, or a patched stand-in

        def counted_pair(*args, **kwargs):
            self.pair_calls += 1
            return inner(*args, **kwargs)
        try:
            with patched(unet, "forward_pair", counted_pair):
                yield self
        finally:
            for hook in hooks:
                hook.remove()

    def _forward(self):
        self.forward_calls += 1

    def per_step(self, steps: int) -> dict:
        return {"unet_passes_per_step": sig(len(self.rows) / steps), "rows_per_pass": sorted(set(self.rows)),
                "forward_pair_calls_per_step": sig(self.pair_calls / steps),
                "module_calls_per_step": sig(self.forward_calls / steps)}


def part_two_stage(pipe, batch: int, steps: int, repeats: int, device, warmup: int = 0) -> dict:
    """(b): passes per step of the batched two-stage sampler and of the two-call version, and their times."""
    ids = random_ids(batch, seed=1)
    unet = pipe.unet
    two_calls = two_call_forward_pair(unet)

    def uiface():
        return pipe(ids, sampler="uiface", num_inference_steps=steps, guidance_scale=GUIDANCE,
                    stage_threshold=STAGE_THRESHOLD, rng="per_image", generator=generators(batch, 1),
                    output_type="latent").images

    def uiface_two_calls():
        with patched(unet, "forward_pair", two_calls):
            return uiface()

    n = visited(steps)
    counts = {}
    for name, fn in (("batched", uiface), ("two_calls", uiface_two_calls), ("cfg", None)):
        counter = ForwardCounter(unet)
        with counter.counting():
            if fn is None:
                pipeline_cfg(pipe, ids, steps, "latent")
            else:
                fn()
        counts[name] = counter.per_step(n)
    seconds, last = alternate({"batched": uiface, "two_calls": uiface_two_calls}, repeats, device, warmup)
    row = summary(seconds, "batched", "two_calls", device)
    row["max_abs_diff"] = max_abs_diff(last["batched"], last["two_calls"])
    stage1 = sum(t >= STAGE_THRESHOLD for t in IDiffDDIMScheduler.timestep_list(steps))
    result = {"sampler": "uiface", "batch": batch, "steps": steps, "visited_steps": n, "stage_one_steps": stage1,
              "stage_threshold": STAGE_THRESHOLD, "counts": counts,
              "goal": "one UNet pass of 2B rows per step (cfg and uiface alike)",
              "meets_goal": counts["batched"]["unet_passes_per_step"] == 1
              and counts["batched"]["rows_per_pass"] == [2 * batch], **row}
    print(f"(b) uiface: {json.dumps(result)}", flush=True)
    return result


# --------------------------------------------------------------------------- (c) rng modes


def part_rng(pipe, batch: int, steps: int, repeats: int, device, step_seconds: float | None, draws: int = 50,
             warmup: int = 0) -> dict:
    """(c): per-image vs global-generator draws alone, and whole pipeline calls in both modes (eta 1)."""
    side = pipe.config.latent_size
    shape = (batch, pipe.unet.config.in_channels, side, side)
    gens = generators(batch)

    def reference_start():
        torch.manual_seed(0)
        return draw_noise(shape, None, device)

    def per_image_start():
        return draw_noise(shape, generators(batch), device)

    micro = {}
    for label, ref_fn, per_fn in (("start", reference_start, per_image_start),
                                  ("step_eta", lambda: draw_noise(shape, None, device),
                                   lambda: draw_noise(shape, gens, device))):
        seconds = alternate({"per_image": per_fn, "reference": ref_fn}, draws, device, warmup=2)[0]["wall"]
        micro[label] = {"median_s": {k: sig(statistics.median(v)) for k, v in seconds.items()},
                        "extra_s": sig(statistics.median(seconds["per_image"])
                                       - statistics.median(seconds["reference"]))}
    ids = random_ids(batch, seed=2)

    def call(rng: str):
        def run():
            if rng == "reference":
                torch.manual_seed(0)
            return pipe(ids, sampler="cfg", num_inference_steps=steps, guidance_scale=GUIDANCE, eta=1.0, rng=rng,
                        generator=generators(batch) if rng == "per_image" else None, output_type="latent").images
        return run

    seconds, _ = alternate({"per_image": call("per_image"), "reference": call("reference")}, repeats, device, warmup)
    calls = summary(seconds, "per_image", "reference", device)
    n = visited(steps)
    step_s = step_seconds if step_seconds is not None else min(seconds["wall"]["reference"]) / n
    result = {"batch": batch, "micro": micro, "calls": {"sampler": "cfg", "eta": 1.0, "steps": steps, **calls},
              "step_seconds": sig(step_s),
              "share_of_50_step_call": {
                  "eta0": sig(micro["start"]["extra_s"] / (50 * step_s), 3),
                  "eta1": sig((micro["start"]["extra_s"] + 50 * micro["step_eta"]["extra_s"]) / (50 * step_s), 3)}}
    print(f"(c) rng: {json.dumps(result)}", flush=True)
    return result


# --------------------------------------------------------------------------- the sweep


class Budget:
    """Seconds left of a hard wall-clock budget; `fits(s)` keeps `reserve` seconds spare."""

    def __init__(self, seconds: float, reserve: float):
        self.start, self.seconds, self.reserve = time.perf_counter(), seconds, reserve

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, predicted: float) -> bool:
        return predicted <= self.left() - self.reserve


def counted_gflop(pipe, device) -> tuple[float, float]:
    """GFLOP of one UNet row and of one image's decode, counted with FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    side = pipe.config.latent_size
    x = torch.randn(1, 3, side, side, device=device, dtype=pipe.unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as unet_count:
        pipe.unet(x, 500, random_ids(1).to(device, pipe.unet.dtype))
    with torch.no_grad(), FlopCounterMode(display=False) as decode_count:
        decode_latents(pipe.vqvae, x.to(pipe.vqvae.dtype))
    return unet_count.get_total_flops() / 1e9, decode_count.get_total_flops() / 1e9


def sweep(args, cpu_pipe, device, result: dict, save) -> None:
    """images/s per (precision, sampler, batch) at `args.steps`, then (a)-(c) on the device as time allows."""
    budget = Budget(args.budget, reserve=2.0 if args.tiny else 10.0)
    unet_gflop, decode_gflop = counted_gflop(cpu_pipe, torch.device("cpu"))  # shapes only: count on the CPU copy
    n = visited(args.steps)
    flop_per_image = {s: (2 * n * unet_gflop + decode_gflop) * 1e9 for s in args.samplers}
    result.update(unet_gflop_per_row=sig(unet_gflop), decode_gflop_per_image=sig(decode_gflop),
                  tflop_per_image={s: sig(f / 1e12) for s, f in flop_per_image.items()}, rows=[], skipped=[])
    spi: dict = {}  # seconds per image of the last measured row of each (precision, sampler)

    def predict(precision, sampler, batch, calls):
        known = spi.get((precision, sampler)) or max(spi.values(), default=None)
        if known is None:
            return 0.0
        factor = 1.0 if (precision, sampler) in spi else 4.0  # fp32 can be several times slower
        return calls * batch * known * factor

    full = {}
    for precision in args.precision:
        pipe = on_device(cpu_pipe, device, DTYPES[precision])
        for sampler in args.samplers:
            for batch in args.batch:
                label = f"{precision} {sampler} b{batch}"
                predicted = predict(precision, sampler, batch, args.repeats + 0.3)
                if full.get((precision, sampler)):
                    result["skipped"].append(f"{label} (a smaller batch ran out of memory)")
                    continue
                if not budget.fits(predicted):
                    result["skipped"].append(f"{label} (predicted {predicted:.0f} s, {budget.left():.0f} s left)")
                    continue
                try:
                    row = sweep_row(pipe, sampler, batch, args, device)
                except (torch.OutOfMemoryError, DeviceMemoryError) as exc:  # the pipeline re-raises OOM as the latter
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    result["skipped"].append(f"{label}: out of memory ({str(exc).splitlines()[0][:120]})")
                    full[(precision, sampler)] = True
                    continue
                spi[(precision, sampler)] = 1 / row["images_per_s"]
                row.update(precision=precision, tflops=sig(row["images_per_s"] * flop_per_image[sampler] / 1e12))
                if args.peak_tflops and precision != "fp32":
                    row["share_of_peak"] = sig(row["tflops"] / args.peak_tflops, 3)
                result["rows"].append({"label": label, **row})
                save()
                print(f"[{budget.elapsed():6.1f} s] {label}: {json.dumps(row)}", flush=True)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    sweep_ratios(args, cpu_pipe, device, result, save, budget, spi)
    result["elapsed_s"] = round(budget.elapsed(), 1)


def sweep_row(pipe, sampler: str, batch: int, args, device) -> dict:
    """One config: a short warm-up call (shapes, cuDNN autotuning), then `args.repeats` whole calls."""
    ids = random_ids(batch, seed=3)
    extra = {"stage_threshold": STAGE_THRESHOLD} if sampler == "uiface" else {}

    def call(steps):
        return pipe(ids, sampler=sampler, num_inference_steps=steps, guidance_scale=GUIDANCE, rng="per_image",
                    generator=generators(batch), output_type="pt", **extra).images

    start = time.perf_counter()
    call(2)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = alternate({"call": lambda: call(args.steps)}, args.repeats, device)[0]["wall"]
    median = statistics.median(seconds["call"])
    return {"sampler": sampler, "batch": batch, "steps": args.steps, "images_per_s": sig(batch / median),
            "seconds_per_call": sig(median), "seconds": [sig(s) for s in seconds["call"]],
            "warmup_s": round(warmup, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


def sweep_ratios(args, cpu_pipe, device, result, save, budget: Budget, spi: dict) -> None:
    """(a)-(c) at the sweep's steps on the device, in the first precision, each if its predicted time fits."""
    precision = args.precision[0]
    pipe = on_device(cpu_pipe, device, DTYPES[precision])
    result["ratios"] = {"precision": precision}
    measured = {(r["precision"], r["sampler"], r["batch"]): 1 / r["images_per_s"] for r in result["rows"]}
    steps, repeats, warmup = args.steps, args.repeats, args.warmup
    for batch in args.ratio_batch:
        known = measured.get((precision, "cfg", batch)) or spi.get((precision, "cfg")) or max(spi.values(), default=1.0)
        calls = 2 * (repeats + warmup)  # whole calls of each part at this batch (two_stage: +3 counted ones)
        plans = (("pipeline", calls, lambda: part_pipeline(pipe, batch, steps, repeats, device, ("pt",), warmup)),
                 ("two_stage", calls + 3, lambda: part_two_stage(pipe, batch, steps, repeats, device, warmup)),
                 ("rng", calls, lambda: part_rng(pipe, batch, steps, repeats, device, None, warmup=warmup)))
        for name, n_calls, run in plans:
            predicted = n_calls * batch * known * (1.3 if name == "two_stage" else 1.0)
            if not budget.fits(predicted):
                left = budget.left()
                result["skipped"].append(f"ratio {name} b{batch} (predicted {predicted:.0f} s, {left:.0f} s left)")
                continue
            result["ratios"][f"{name}_b{batch}"] = run()
            save()


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--tiny", "--quick", dest="tiny", action="store_true",
                        help="the tiny models (a plumbing run of this script in seconds)")
    parser.add_argument("--sweep", action="store_true", help="images/s sweep (the GPU benchmark) instead of the ratios")
    parser.add_argument("--parts", nargs="+", default=["pipeline", "two_stage", "rng"],
                        choices=["pipeline", "two_stage", "rng"], help="ratios mode: which of (a), (b), (c)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="ratios: the batch (default 4); sweep: the batch sizes (default 1 8 32 64 128)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: ratios 4, sweep 50)")
    parser.add_argument("--rng-steps", type=int, default=1, help="ratios: steps of the whole calls of (c)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side or config (median reported)")
    parser.add_argument("--precision", nargs="+", default=None, choices=list(DTYPES),
                        help="sweep: default bf16 fp32 (the ratios run in fp32 on CPU, the first precision on CUDA)")
    parser.add_argument("--samplers", nargs="+", default=["cfg", "uiface"], choices=["cfg", "uiface"])
    parser.add_argument("--ratio-batch", type=int, nargs="*", default=None,
                        help="sweep: batches for (a)-(c) after the sweep (default 1 64; none to skip)")
    parser.add_argument("--budget", type=float, default=330.0, help="sweep: hard wall-clock budget in seconds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="sweep: the chip's dense bf16 peak")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls of each side before the repeats (default 1; 0 for full size on the CPU, "
                             "where a shared warm-up of every shape runs first)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 0 if (args.device == "cpu" and not args.tiny and not args.sweep) else 1
    if args.sweep:
        args.batch = args.batch or [1, 8, 32, 64, 128]
        args.steps = args.steps or 50
        args.precision = args.precision or ["bf16", "fp32"]
        args.ratio_batch = [1, 64] if args.ratio_batch is None else args.ratio_batch
    else:
        args.batch = args.batch or [4]
        args.steps = args.steps or 4
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench_idiff: no CUDA device is visible to torch (torch {torch.__version__}, built for CUDA "
                 f"{torch.version.cuda}). Run it on a GPU machine (benchmarks/gpu_idiff.sh), or drop --device cuda "
                 "to run on the CPU.")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result: dict = {
        "benchmark": "idiff_sweep" if args.sweep else "idiff_ratios",
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["bench_idiff.py", *argv]),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "tiny" if args.tiny else "full-size (216.3M UNet, VQ-f4 decoder)",
        "weights": "deterministic (idiff.testing): speed only, the images are not faces",
        "loadavg_1min_start": load,
    }
    if device.type == "cuda":
        result.update(cuda=torch.version.cuda, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                      tf32_cudnn=torch.backends.cudnn.allow_tf32, cudnn_benchmark=True)

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))

    cpu_pipe = build_cpu_pipeline(args.tiny)
    result["build_s"] = round(time.perf_counter() - start, 1)
    if args.sweep:
        result.update(steps=args.steps, batches=args.batch, precisions=args.precision, samplers=args.samplers,
                      budget_s=args.budget, peak_tflops_dense_bf16=args.peak_tflops)
        sweep(args, cpu_pipe, device, result, save)
    else:
        ratios(args, cpu_pipe, device, result)
    result["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result["wall_s"] = round(time.perf_counter() - start, 1)
    save()
    print(json.dumps(result, indent=2))
    return result


def ratios(args, cpu_pipe, device, result: dict) -> None:
    """(a), (b), (c) at one batch, fp32 on the CPU (the first --precision, default fp32, elsewhere)."""
    precision = (args.precision or ["fp32"])[0]
    pipe = on_device(cpu_pipe, device, DTYPES[precision])
    batch = args.batch[0]
    result.update(precision=precision, batch=batch, steps=args.steps, repeats=args.repeats, warmup=args.warmup)
    # One shared warm-up of every shape the parts use (2B-row forward, the pair forward, the decode).
    start = time.perf_counter()
    side = pipe.config.latent_size
    with torch.no_grad():
        x = torch.randn(batch, 3, side, side, device=device, dtype=pipe.unet.dtype)
        c = random_ids(batch).to(device, pipe.unet.dtype)
        pipe.unet(torch.cat([x, x]), 500, torch.cat([c, c]))
        pipe.unet.forward_pair(x, 500, c, use_context=True, restandardise=True)
        decode_latents(pipe.vqvae, x.to(pipe.vqvae.dtype))
    sync(device)
    result["warmup_s"] = round(time.perf_counter() - start, 1)
    step_seconds = None
    if "pipeline" in args.parts:
        result["pipeline"] = part_pipeline(pipe, batch, args.steps, args.repeats, device, warmup=args.warmup)
        step_seconds = result["pipeline"]["latent"]["wall"]["min_s"]["bare"] / visited(args.steps)
    if "two_stage" in args.parts:
        result["two_stage"] = part_two_stage(pipe, batch, args.steps, args.repeats, device, args.warmup)
    if "rng" in args.parts:
        result["rng"] = part_rng(pipe, batch, args.rng_steps, args.repeats, device, step_seconds, warmup=args.warmup)


if __name__ == "__main__":
    main()
