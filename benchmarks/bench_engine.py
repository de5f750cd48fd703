"""Engine overhead: end-to-end time of a dataset run against the time spent inside the model.

Runs a recipe (default pipelines/smoke.toml: the tiny random-weight model, every export format)
with more identities into a temporary folder, with the renderer wrapped so every model call is
timed in the same process. Everything outside those calls (identity sampling, perturbation,
resizing, JPEG encoding, shard writes with fsync, finalize and exports) is engine overhead. On the
tiny model the model is cheap, so this is a worst case for the overhead's share; with a real model
on a GPU the same engine time is spread over far slower renders.

--standin measures how well the engine overlaps its stages. A stand-in renderer sleeps a fixed time
per batch (time.sleep frees the GIL, as the host does while a GPU kernel runs) and returns real
photos (t1.jpg's six faces, mirrored and lit per seed), so the dlib filter detects, aligns and
embeds every image. Three timings in this process: render alone (the stand-in's calls, replayed
with the run's batch sizes), analysis + writing alone (the run with a stand-in that takes no time)
and end to end (the run with the sleeping stand-in), after an untimed warm-up run, each over the shards (render, analyse, write;
no identity sampling or finalize). By default the sleep makes both stages equally long, the hardest
case: a serial engine takes their sum (about 2x the busier stage), a fully overlapped one about
the busier stage alone.

    python benchmarks/bench_engine.py [--identities 64] [--images 4] [--quick] [--json out.json]
    python benchmarks/bench_engine.py --standin [--seconds-per-batch S] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the stand-in's photos come from tests/helpers/engine.py


class TimedRenderer:
    """Wraps a `Renderer`, adding up the seconds and images of its calls."""

    def __init__(self, renderer, sync=None):
        self.renderer, self.sync = renderer, sync
        self.seconds, self.images, self.calls = 0.0, 0, 0

    def __call__(self, conditions, seeds):
        start = time.perf_counter()
        images = self.renderer(conditions, seeds)
        if self.sync:
            self.sync()
        self.seconds += time.perf_counter() - start
        self.images += len(images)
        self.calls += 1
        return images


def timed_run(recipe, renderer, *, analyzer=None, sync=None, scratch: Path | None = None) -> dict:
    """Run `recipe` end to end into a temp folder with `renderer` timed; returns the split.

    Keys: images (rendered), model_calls, total_s, model_s, engine_s, total_over_model,
    engine_share, images_per_s (end to end), model_images_per_s; and from the run summary's stage
    times shards_s (the wall time of rendering, analysing and writing every shard, without the
    one-off identity sampling and finalize), shard_overhead_share (the part of shards_s outside the model) and shard_images_per_s:
    the steady-state rate of a long run.
    """
    from synthface.engine import run

    timed = TimedRenderer(renderer, sync)
    out = Path(tempfile.mkdtemp(prefix="bench-engine-", dir=scratch))
    try:
        start = time.perf_counter()
        summary = run(recipe, out / "run", renderer=timed, analyzer=analyzer)
        total = time.perf_counter() - start
        shards_s = summary.stages["wall_s"]  # the rank's shards, streamed into each other: one wall time
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not summary.finalized:
        raise RuntimeError("the benchmark run did not finalize")
    return {
        "images": timed.images,
        "images_kept": summary.stats.get("images_kept"),
        "drop_reasons": summary.stats.get("drop_reasons"),
        "model_calls": timed.calls,
        "total_s": round(total, 4),
        "model_s": round(timed.seconds, 4),
        "engine_s": round(total - timed.seconds, 4),
        "total_over_model": round(total / timed.seconds, 3),
        "engine_share": round((total - timed.seconds) / total, 4),
        "images_per_s": round(timed.images / total, 3),
        "model_images_per_s": round(timed.images / timed.seconds, 3),
        "shards_s": round(shards_s, 4),
        "shard_overhead_share": round((shards_s - timed.seconds) / shards_s, 4),
        "shard_images_per_s": round(timed.images / shards_s, 3),
    }


class StandInRenderer:
    """A diffusion model's stand-in: `seconds` per call in time.sleep (the GIL is free, as while a
    GPU kernel runs), then one real photo per image: identity -> one of t1.jpg's six faces (by the
    condition vector's largest entry), mirrored by seed parity and lit by seed, so no two images of
    an identity are the same. Records each call's batch size so the calls can be replayed alone."""

    def __init__(self, seconds: float):
        from tests.helpers.engine import face_crops

        self.seconds, self.photos, self.batches = seconds, face_crops(), []

    def __call__(self, conditions, seeds) -> list[np.ndarray]:
        time.sleep(self.seconds)
        self.batches.append(len(seeds))
        out = []
        for condition, seed in zip(conditions, seeds):
            photo = self.photos[int(np.argmax(condition)) % len(self.photos)]
            photo = photo[:, ::-1] if seed % 2 else photo
            gain = 0.8 + 0.4 * (seed % 1000) / 1000
            out.append(np.clip(photo * gain, 0, 255).astype(np.uint8))
        return out


def standin_run(recipe, seconds_per_batch: float | None) -> dict:
    """The three timings of --standin (see the module docstring) and their ratios."""
    from synthface.faces import get_analyzer

    analyzer = get_analyzer(recipe.filtering.analyzer, **recipe.filtering.analyzer_options)  # loaded once
    timed_run(recipe, StandInRenderer(0.0), analyzer=analyzer)  # warm-up: first calls, imports, caches
    instant = StandInRenderer(0.0)
    rest = timed_run(recipe, instant, analyzer=analyzer)
    rest_alone = rest["shards_s"] - rest["model_s"]  # the instant stand-in's own photo work is not analysis
    seconds = rest_alone / len(instant.batches) if seconds_per_batch is None else seconds_per_batch
    sleeping = StandInRenderer(seconds)
    start = time.perf_counter()
    for size in instant.batches:
        sleeping(np.eye(size, 512, dtype=np.float32), list(range(size)))
    render_alone = time.perf_counter() - start
    run = timed_run(recipe, StandInRenderer(seconds), analyzer=analyzer)
    busier = max(render_alone, rest_alone)
    return {
        "seconds_per_batch": round(seconds, 4),
        "batches": len(instant.batches),
        "render_alone_s": round(render_alone, 4),
        "analysis_writing_alone_s": round(rest_alone, 4),
        "busier_stage": "render" if render_alone >= rest_alone else "analysis_writing",
        "busier_s": round(busier, 4),
        "end_to_end_s": run["shards_s"],
        "end_to_end_over_busier": round(run["shards_s"] / busier, 3),
        "end_to_end_over_sum": round(run["shards_s"] / (render_alone + rest_alone), 3),
        "run": run,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "smoke.toml")
    parser.add_argument("--identities", type=int, default=None, help="default 64, or 6 with --standin")
    parser.add_argument("--images", type=int, default=None, help="images per identity (default 4, or 24 with --standin)")
    parser.add_argument("--quick", action="store_true", help="8 identities x 2 images, or 6 x 4 with --standin (tests)")
    parser.add_argument("--standin", action="store_true", help="overlap benchmark: sleeping stand-in, real photos, dlib")
    parser.add_argument("--seconds-per-batch", type=float, default=None,
                        help="the stand-in's sleep per batch (default: analysis + writing time per batch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--full-size-vec2face", action="store_true",
                        help="render with the full-size Vec2Face architecture and random weights (speed only: the "
                        "images are not faces); the recipe's model is set to vec2face-tiny for its family's settings")
    args = parser.parse_args(argv)

    from synthface.engine import Ranks, build_renderer
    from synthface.recipe import load_recipe

    if args.standin:
        # one person per identity, every image analysed once: no perturbation, no resampling rounds
        identities, images = (6, 4) if args.quick else (args.identities or 6, args.images or 24)
        fixed = ['variation.perturbation={"1.0" = 1.0}', "variation.overgenerate=1.0", "filtering.enabled=true",
                 'filtering.analyzer="dlib"', 'filtering.on_too_few="keep"', 'filtering.collision_policy="flag"',
                 "filtering.near_duplicate_cos=1.0",
                 'export.formats=["recordio"]', "compute.shard_size=2"]
    else:
        identities, images = (8, 2) if args.quick else (args.identities or 64, args.images or 4)
        fixed = []
    overrides = [f"identities.count={identities}", f"variation.images_per_identity={images}", *fixed, *args.set]
    if args.full_size_vec2face:
        overrides.append('generation.model="vec2face-tiny"')
    recipe = load_recipe(args.recipe, overrides)
    if args.standin:
        result = {"benchmark": "engine_overlap", "recipe": args.recipe.name, "overrides": overrides,
                  **standin_run(recipe, args.seconds_per_batch)}
        lines = [
            f"{result['run']['images']} images ({identities} identities x {images}) in {result['batches']} batches, "
            f"stand-in {result['seconds_per_batch']:.3f} s per batch",
            f"render alone              {result['render_alone_s']:8.2f} s",
            f"analysis + writing alone  {result['analysis_writing_alone_s']:8.2f} s",
            f"end to end                {result['end_to_end_s']:8.2f} s  = {result['end_to_end_over_busier']:.2f}x the "
            f"busier stage ({result['busier_stage']}), {result['end_to_end_over_sum']:.2f}x their sum",
        ]
    else:
        start = time.perf_counter()
        if args.full_size_vec2face:
            from synthface.generators import build_renderer as renderer_for
            from synthface.generators.vec2face.testing import full_size_vec2face_pipeline

            renderer = renderer_for(full_size_vec2face_pipeline(), name="vec2face")
        else:
            renderer = build_renderer(recipe, Ranks())
        build_s = time.perf_counter() - start
        result = {
            "benchmark": "engine_overhead",
            "recipe": args.recipe.name,
            "overrides": overrides,
            "model": "vec2face (full size, random weights)" if args.full_size_vec2face else recipe.generation.model,
            "renderer_build_s": round(build_s, 3),
            **timed_run(recipe, renderer),
        }
        lines = [
            f"{result['images']} images ({identities} identities x {images}) in {result['model_calls']} model calls",
            f"end to end   {result['total_s']:8.2f} s  {result['images_per_s']:8.1f} images/s",
            f"inside model {result['model_s']:8.2f} s  {result['model_images_per_s']:8.1f} images/s",
            f"engine       {result['engine_s']:8.2f} s  ({100 * result['engine_share']:.0f} % of the run); "
            f"end to end / model = {result['total_over_model']:.2f}x",
            f"shards only  {result['shards_s']:8.2f} s  {result['shard_images_per_s']:8.1f} images/s "
            f"({100 * result['shard_overhead_share']:.0f} % outside the model; no identity sampling or finalize)",
        ]
    print("\n".join(lines))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result

if __name__ == "__main__":
    main()
