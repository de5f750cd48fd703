"""Engine overhead: end-to-end time of a dataset run against the time spent inside the model.

Runs a recipe (default pipelines/smoke.toml: the tiny random-weight model, every export format)
with more identities into a temporary folder, with the renderer wrapped so every model call is
timed in the same process. Everything outside those calls (identity sampling, perturbation,
resizing, JPEG encoding, shard writes with fsync, finalize and exports) is engine overhead. On the
tiny model the model is cheap, so this is a worst case for the overhead's share; with a real model
on a GPU the same engine time is spread over far slower renders.

    python benchmarks/bench_engine.py [--identities 64] [--images 4] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
    engine_share, images_per_s (end to end), model_images_per_s; and from the shards' done markers
    shards_s (render + analyse + write of every shard, without the one-off identity sampling and
    finalize), shard_overhead_share (the part of shards_s outside the model) and shard_images_per_s:
    the steady-state rate of a long run.
    """
    from synthface.engine import RunLayout, num_shards, run

    timed = TimedRenderer(renderer, sync)
    out = Path(tempfile.mkdtemp(prefix="bench-engine-", dir=scratch))
    try:
        start = time.perf_counter()
        summary = run(recipe, out / "run", renderer=timed, analyzer=analyzer)
        total = time.perf_counter() - start
        layout = RunLayout(out / "run")
        shards_s = sum(json.loads(layout.done_marker(i).read_text())["seconds"] for i in range(num_shards(recipe)))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not summary.finalized:
        raise RuntimeError("the benchmark run did not finalize")
    return {
        "images": timed.images,
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "smoke.toml")
    parser.add_argument("--identities", type=int, default=64)
    parser.add_argument("--images", type=int, default=4, help="images per identity")
    parser.add_argument("--quick", action="store_true", help="8 identities x 2 images (for tests)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)

    from synthface.engine import Ranks, build_renderer
    from synthface.recipe import load_recipe

    identities, images = (8, 2) if args.quick else (args.identities, args.images)
    overrides = [f"identities.count={identities}", f"variation.images_per_identity={images}", *args.set]
    recipe = load_recipe(args.recipe, overrides)
    start = time.perf_counter()
    renderer = build_renderer(recipe, Ranks())
    build_s = time.perf_counter() - start
    result = {
        "benchmark": "engine_overhead",
        "recipe": args.recipe.name,
        "overrides": overrides,
        "model": recipe.generation.model,
        "renderer_build_s": round(build_s, 3),
        **timed_run(recipe, renderer),
    }
    print(f"{result['images']} images ({identities} identities x {images}) in {result['model_calls']} model calls")
    print(f"end to end   {result['total_s']:8.2f} s  {result['images_per_s']:8.1f} images/s")
    print(f"inside model {result['model_s']:8.2f} s  {result['model_images_per_s']:8.1f} images/s")
    print(f"engine       {result['engine_s']:8.2f} s  ({100 * result['engine_share']:.0f} % of the run); "
          f"end to end / model = {result['total_over_model']:.2f}x")
    print(f"shards only  {result['shards_s']:8.2f} s  {result['shard_images_per_s']:8.1f} images/s "
          f"({100 * result['shard_overhead_share']:.0f} % outside the model; no identity sampling or finalize)")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
