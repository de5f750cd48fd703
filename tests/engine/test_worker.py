"""The overlapped engine (render | analyse | write on their own threads) against the serial one:
the same files, a failing stage leaves no partial shard, and a shard's pixels stay bounded."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from synthface import engine
from synthface.faces import get_analyzer
from synthface.recipe import load_recipe
from synthface.stages import StageTimes
from tests.helpers.engine import COLLISION_COS, PhotoRenderer, data_files, photo_recipe, small_recipe

SMOKE = Path(__file__).resolve().parents[2] / "pipelines" / "smoke.toml"


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
    assert set(record["stages"]["busy_s"]) >= {"render", "analyse", "write"}
    assert record["stages"]["bottleneck"] in record["stages"]["busy_s"]
    assert summary.stages["images_per_s"] > 0 and set(summary.stages["busy_share"]) >= {"render", "analyse", "write"}
    # The session's report is the rank's stage record, and the finished run copies it into run.json.
    layout = engine.RunLayout(tmp_path / "run")
    assert json.loads(layout.stage_record(0).read_text()) == summary.stages
    info = json.loads(layout.run_file.read_text())
    assert info["stages"] == {"rank0": summary.stages} and info["fingerprint"] == recipe.fingerprint()


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


def streaming_recipe():
    """Three shards of two identities, three batches each; identity 3 (shard 1) has a swapped image
    and so needs a resampling round (min_images = 3), of two more batches."""
    return small_recipe(
        identities={"count": 6, "dim": 512},
        generation={"batch_size": 2},
        variation={"images_per_identity": 3, "overgenerate": 1.0, "perturbation": {"1.0": 1.0}},
        filtering={"enabled": True, "analyzer": "dlib", "near_duplicate_cos": 1.0, "collision_cos": COLLISION_COS,
                   "min_cos": 0.95, "min_images": 3, "on_too_few": "resample"},
        export={"formats": ["imagefolder"]},
        compute={"shard_size": 2},
    )


def streaming_renderer(recipe, out):
    layout = engine.prepare_output(recipe, out)
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    return PhotoRenderer(bank.vectors, recipe.seed, {(3, 1): 0})


@pytest.fixture(scope="module")
def streaming_serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("streaming") / "serial"
    recipe = streaming_recipe()
    renderer = streaming_renderer(recipe, out)
    summary = engine.run(recipe, out, renderer=renderer, analyzer=get_analyzer("dlib"), max_in_flight=1)
    return recipe, out, renderer.calls, summary.stats


def test_shards_stream_into_each_other_with_a_resampling_round_and_the_same_files(streaming_serial, tmp_path):
    recipe, serial, serial_calls, stats = streaming_serial
    renderer = streaming_renderer(recipe, tmp_path / "run")
    summary = engine.run(recipe, tmp_path / "run", renderer=renderer, analyzer=get_analyzer("dlib"))
    assert data_files(tmp_path / "run") == data_files(serial) and summary.stats == stats
    assert renderer.calls == serial_calls == 3 * 3 + 2  # three shards of three batches, one round of two
    rows = engine.RunLayout(serial).record(1)
    assert rows["candidates"] == 9 and rows["kept"] == 6  # shard 1's second round: identity 3 again
    assert stats["images_kept"] == 18 and stats["drop_reasons"] == {"low_similarity": 1, "surplus": 2}


class StallingAnalyzer:
    """dlib, where the analysis of shard 0's last batch waits until shard 1's first batch has been
    rendered, and shard 1's first analysis raises: a crash while shard 0 is finishing."""

    def __init__(self, renderer: PhotoRenderer):
        self.inner, self.renderer, self.calls = get_analyzer("dlib"), renderer, 0
        self.second_shard_rendered = threading.Event()
        render = renderer.__call__

        def counting(conditions, seeds):
            images = render(conditions, seeds)
            if renderer.calls == 4:
                self.second_shard_rendered.set()
            return images

        self.render = counting

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def analyze(self, images, **kwargs):
        self.calls += 1
        if self.calls == 3:
            assert self.second_shard_rendered.wait(30), "shard 1 was not rendered while shard 0 was in flight"
        if self.calls == 4:
            raise RuntimeError("analysis crashed")
        return self.inner.analyze(images, **kwargs)


def test_a_crash_in_the_next_shard_keeps_the_finishing_shard_and_leaves_no_partial_one(streaming_serial, tmp_path):
    recipe, serial, _, _ = streaming_serial
    out = tmp_path / "run"
    renderer = streaming_renderer(recipe, out)
    stalling = StallingAnalyzer(renderer)
    with pytest.raises(RuntimeError, match="analysis crashed"):
        engine.run(recipe, out, renderer=stalling.render, analyzer=stalling)
    layout = engine.RunLayout(out)
    assert sorted(p.name for p in layout.shards.iterdir()) == ["shard-000000", "shard-000000.done"]
    engine.run(recipe, out, renderer=renderer, analyzer=get_analyzer("dlib"))
    assert data_files(out) == data_files(serial)


def uint8_noise(size: int):
    def render(conditions, seeds):
        return [np.random.default_rng(int(s)).integers(0, 256, (size, size, 3), dtype=np.uint8) for s in seeds]

    return render


def test_a_shard_holds_only_its_in_flight_batches_pixels(tmp_path):
    side, batch, images = 192, 4, 96
    recipe = small_recipe(identities={"count": 25, "dim": 64}, generation={"batch_size": batch},
                          variation={"images_per_identity": images // 12}, export={"keep_full_images": True},
                          compute={"shard_size": 12})
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    worker = engine.ShardWorker(recipe, layout, uint8_noise(side))
    worker.run_shard(2, bank.vectors)  # one identity, untraced: the imports of a first write are not the shard's
    tracemalloc.start()
    try:
        results = worker.run_shards([0, 1], bank.vectors)  # two shards streamed into each other
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_image = side * side * 3 + 112 * 112 * 3  # the full image and its crop
    all_pixels = images * per_image  # what one shard holding every image until the end needs (~12 MB)
    assert peak < (engine.MAX_IN_FLIGHT + 3) * batch * per_image < all_pixels / 3
    assert [r.unit for r in results] == ["shard-000000", "shard-000001"]
    for shard in (0, 1):
        full = sorted((layout.shard_dir(shard) / "full").rglob("*.png"))
        assert len(full) == images and not (layout.shard_dir(shard) / layout.STAGED).exists()


def test_stage_report_arithmetic():
    times = StageTimes({"render": 6.0, "analyse": 3.0, "write": 1.5, "sink": 0.1},
                       {"render": 4, "analyse": 4, "write": 4, "sink": 4}, wall=8.0)
    report = engine.stage_report(times, 32)
    assert report == {"images_per_s": 4.0, "wall_s": 8.0, "busy_s": {"render": 6.0, "analyse": 3.0, "write": 1.5,
                                                                      "sink": 0.1},
                      "busy_share": {"render": 0.75, "analyse": 0.375, "write": 0.188, "sink": 0.013},
                      "bottleneck": "render"}
    json.dumps(report)  # a done record holds it
