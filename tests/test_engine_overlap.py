"""The overlapped engine (render | analyse | write on their own threads) against the serial one:
the same files, a failing stage leaves no partial shard, and a shard's pixels stay bounded."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from synthface import engine
from synthface.faces import get_analyzer
from synthface.recipe import load_recipe
from synthface.stages import StageTimes
from tests.engine_doubles import PhotoRenderer
from tests.test_engine import small_recipe
from tests.test_engine_verdicts import data_files, photo_recipe

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.toml"


def test_overlapped_and_serial_engines_write_the_same_smoke_dataset(tmp_path):
    recipe = load_recipe(SMOKE, ["identities.count=5"])
    renderer = engine.build_renderer(recipe, engine.Ranks())  # the tiny model: a real diffusion pipeline
    serial = engine.run(recipe, tmp_path / "serial", renderer=renderer, max_in_flight=1)
    overlapped = engine.run(recipe, tmp_path / "overlapped", renderer=renderer)
    assert serial.stats == overlapped.stats and overlapped.stats["images_kept"] == 20
    assert data_files(tmp_path / "serial") == data_files(tmp_path / "overlapped")
    assert len([k for k in data_files(tmp_path / "serial") if k.endswith(".jpg")]) >= 20


class FailingAnalyzer:
    """dlib, except that the `fail_at`-th call to `analyze` raises (a crash in the analysis stage)."""

    def __init__(self, fail_at: int):
        self.inner, self.fail_at, self.calls = get_analyzer("dlib"), fail_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def analyze(self, images, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("analysis crashed")
        return self.inner.analyze(images, **kwargs)


@pytest.fixture(scope="module")
def photo_serial(tmp_path_factory):
    """The real-photo run (dlib detects, aligns and embeds every image) on the serial engine."""
    out = tmp_path_factory.mktemp("photos") / "serial"
    recipe = photo_recipe(min_cos=0.95)  # the planted swap sits at 0.92 to its identity's centre
    layout = engine.prepare_output(recipe, out)
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    renderer = PhotoRenderer(bank.vectors, recipe.seed, {(1, 1): 3})
    engine.run(recipe, out, renderer=renderer, analyzer=get_analyzer("dlib"), max_in_flight=1)
    return recipe, bank, out


def test_overlapped_and_serial_engines_agree_with_the_real_dlib_filter(photo_serial, tmp_path):
    recipe, bank, serial = photo_serial
    renderer = PhotoRenderer(bank.vectors, recipe.seed, {(1, 1): 3})
    summary = engine.run(recipe, tmp_path / "run", renderer=renderer, analyzer=get_analyzer("dlib"))
    assert data_files(serial) == data_files(tmp_path / "run")
    assert summary.stats["drop_reasons"] == {"low_similarity": 1}  # the planted swap, judged the same way
    # Each shard's record says how its stages spent their time.
    record = engine.RunLayout(tmp_path / "run").record(0)
    assert set(record["stages"]["busy_s"]) == {"render", "analyse", "write", "sink"}
    assert record["stages"]["bottleneck"] in record["stages"]["busy_s"]
    assert summary.stages["images_per_s"] > 0 and set(summary.stages["busy_share"]) >= {"render", "analyse", "write"}


def test_a_crash_in_the_analysis_stage_leaves_no_partial_shard_and_a_rerun_completes(photo_serial, tmp_path):
    recipe, bank, serial = photo_serial
    out = tmp_path / "run"
    renderer = PhotoRenderer(bank.vectors, recipe.seed, {(1, 1): 3})
    failing = FailingAnalyzer(fail_at=2)  # shard 0 is one batch: the crash is in shard 1
    with pytest.raises(RuntimeError, match="analysis crashed"):
        engine.run(recipe, out, renderer=renderer, analyzer=failing)
    layout = engine.RunLayout(out)
    assert layout.is_done(0) and not layout.done_marker(1).exists()
    assert sorted(p.name for p in layout.shards.iterdir()) == ["shard-000000", "shard-000000.done"]
    engine.run(recipe, out, renderer=renderer, analyzer=get_analyzer("dlib"))
    assert data_files(out) == data_files(serial)


def uint8_noise(size: int):
    def render(conditions, seeds):
        return [np.random.default_rng(int(s)).integers(0, 256, (size, size, 3), dtype=np.uint8) for s in seeds]

    return render


def test_a_shard_holds_only_its_in_flight_batches_pixels(tmp_path):
    side, batch, images = 192, 4, 96
    recipe = small_recipe(identities={"count": 13, "dim": 64}, generation={"batch_size": batch},
                          variation={"images_per_identity": images // 12}, export={"keep_full_images": True},
                          compute={"shard_size": 12})
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    worker = engine.ShardWorker(recipe, layout, uint8_noise(side))
    worker.run_shard(1, bank.vectors)  # one identity, untraced: the imports of a first write are not the shard's
    tracemalloc.start()
    try:
        worker.run_shard(0, bank.vectors)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_image = side * side * 3 + 112 * 112 * 3  # the full image and its crop
    all_pixels = images * per_image  # what a shard holding every image until the end needs (~12 MB)
    assert peak < (engine.MAX_IN_FLIGHT + 3) * batch * per_image < all_pixels / 3
    full = sorted((layout.shard_dir(0) / "full").rglob("*.png"))
    assert len(full) == images and not (layout.shard_dir(0) / layout.STAGED).exists()


def test_stage_report_arithmetic():
    times = StageTimes({"render": 6.0, "analyse": 3.0, "write": 1.5, "sink": 0.1},
                       {"render": 4, "analyse": 4, "write": 4, "sink": 4}, wall=8.0)
    report = engine.stage_report(times, 32)
    assert report == {"images_per_s": 4.0, "wall_s": 8.0, "busy_s": {"render": 6.0, "analyse": 3.0, "write": 1.5,
                                                                      "sink": 0.1},
                      "busy_share": {"render": 0.75, "analyse": 0.375, "write": 0.188, "sink": 0.013},
                      "bottleneck": "render"}
    json.dumps(report)  # a done record holds it
