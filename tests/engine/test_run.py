"""The dataset engine: plans and seeds, resumable shards, ranks, filtering with a real recogniser."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from synthface import engine
from synthface.engine import runner, worker
from synthface.errors import InvalidInputError, OutputPathError
from tests.helpers.engine import PhotoRenderer, noise_renderer, small_recipe, tree_digest


def test_run_writes_every_candidate_and_the_exports(tmp_path):
    recipe = small_recipe()
    summary = engine.run(recipe, tmp_path / "run", renderer=noise_renderer())
    assert summary.finalized and summary.shards_run == [0, 1, 2, 3]
    rows = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    assert len(rows) == 21 and all(r["kept"] for r in rows)
    assert sorted({r["label"] for r in rows}) == list(range(7))
    for r in rows:
        assert (tmp_path / "run" / r["path"]).is_file()
        assert r["condition_cos"] == pytest.approx(r["target_cos"], abs=1e-5)
    assert (tmp_path / "run" / "export" / "recordio" / "train.rec").is_file()
    assert len(list((tmp_path / "run" / "export" / "imagefolder").rglob("*.jpg"))) == 21
    card = (tmp_path / "run" / "README.md").read_text()
    assert "non-commercial" in card.lower()
    # A rerun skips every shard and leaves the data untouched.
    before = tree_digest(tmp_path / "run")
    again = engine.run(recipe, tmp_path / "run", renderer=noise_renderer())
    assert again.shards_run == [] and again.shards_skipped == [0, 1, 2, 3]
    assert tree_digest(tmp_path / "run") == before


def test_ranks_split_shards_and_give_the_same_dataset(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    recipe = small_recipe()
    engine.run(recipe, tmp_path / "one", renderer=noise_renderer())
    engine.prepare_output(recipe, tmp_path / "two")  # as the launcher's first rank to start would

    def rank(r):
        return engine.run(recipe, tmp_path / "two", ranks=engine.Ranks(r, 2), renderer=noise_renderer(), wait_seconds=120)

    with ThreadPoolExecutor(2) as pool:
        r0, r1 = pool.map(rank, [0, 1])
    assert r0.shards_run == [0, 2] and r0.finalized
    assert r1.shards_run == [1, 3] and not r1.finalized
    assert tree_digest(tmp_path / "one") == {k: v for k, v in tree_digest(tmp_path / "two").items() if "rank" not in k}


def test_a_shard_without_done_marker_is_redone_and_temporaries_vanish(tmp_path):
    recipe = small_recipe()
    out = tmp_path / "run"
    engine.run(recipe, out, renderer=noise_renderer())
    reference = tree_digest(out)
    layout = engine.RunLayout(out)
    # Simulate a crash between the rename and the marker, and a crash mid-write of another shard.
    layout.done_marker(2).unlink()
    (layout.shard_dir(2) / "manifest.parquet").write_bytes(b"half")
    stale = layout.shards / ".shard-000001.tmp-999999"
    stale.mkdir()
    layout.done_marker(1).unlink()
    layout.final_done.unlink()
    summary = engine.run(recipe, out, renderer=noise_renderer())
    assert summary.shards_run == [1, 2]
    assert tree_digest(out) == reference
    assert not list(layout.shards.glob(".*tmp*"))


def test_a_different_recipe_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    engine.run(small_recipe(), out, renderer=noise_renderer())
    other = small_recipe(seed=4)
    with pytest.raises(OutputPathError, match="different recipe"):
        engine.run(other, out, renderer=noise_renderer())
    assert (out / "manifest.parquet").is_file()  # nothing was deleted
    engine.run(other, out, renderer=noise_renderer(), overwrite=True)
    assert json.loads((out / "run.json").read_text())["fingerprint"] == other.fingerprint()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="holds no synthface run"):
        engine.run(small_recipe(), tmp_path / "foreign", renderer=noise_renderer())


def test_filtering_drops_swapped_faces_with_the_real_recogniser(tmp_path):
    recipe = small_recipe(
        identities={"count": 6, "dim": 512},
        variation={"images_per_identity": 4, "overgenerate": 1.5, "perturbation": {"1.0": 1.0}},
        filtering={"enabled": True, "analyzer": "dlib", "near_duplicate_cos": 1.0, "collision_cos": 0.95},
        compute={"shard_size": 3},
    )
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    swaps = {(0, 1): 3, (2, 4): 5, (4, 0): 1}  # (identity, image) -> person rendered instead
    renderer = PhotoRenderer(bank.vectors, recipe.seed, swaps)
    engine.run(recipe, tmp_path / "run", renderer=renderer)
    rows = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    by_key = {(r["identity"], r["image"]): r for r in rows}
    for key in swaps:
        assert not by_key[key]["kept"] and by_key[key]["drop_reason"] == "low_similarity", by_key[key]
    genuine = [r for k, r in by_key.items() if k not in swaps]
    assert min(r["filter_cos"] for r in genuine) > max(by_key[k]["filter_cos"] for k in swaps)
    kept = [r for r in rows if r["kept"]]
    assert all(sum(r["identity"] == i for r in kept) == 4 for i in range(6))
    # Finalize measured the set: six distinct people, the swaps counted among the drops.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (tmp_path / "run" / "report.html").is_file()
    assert report["counts"]["drop_reasons"]["low_similarity"] == 3


def test_full_disk_stops_cleanly_and_a_rerun_finishes(tmp_path, monkeypatch):
    import errno

    recipe = small_recipe()
    out = tmp_path / "run"
    engine.run(recipe, tmp_path / "reference", renderer=noise_renderer())
    calls = {"n": 0}
    real = worker.encode_jpeg

    def fill_disk_after_seven(image, quality=95):
        calls["n"] += 1
        if calls["n"] > 7:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(image, quality)

    monkeypatch.setattr(worker, "encode_jpeg", fill_disk_after_seven)
    with pytest.raises(OutputPathError, match="No space left on device.*run the same command again"):
        engine.run(recipe, out, renderer=noise_renderer())
    layout = engine.RunLayout(out)
    assert [s for s in range(4) if layout.done_marker(s).exists()] == [0]
    assert not layout.shard_dir(1).exists() and not list(layout.shards.glob(".*tmp*"))
    monkeypatch.setattr(worker, "encode_jpeg", real)
    engine.run(recipe, out, renderer=noise_renderer())
    assert tree_digest(out) == tree_digest(tmp_path / "reference")


def test_same_space_needs_matching_dimensions(tmp_path):
    recipe = small_recipe(
        identities={"count": 2, "dim": 512},
        filtering={"enabled": True, "analyzer": "dlib", "same_space": True},
    )
    layout = engine.prepare_output(recipe, tmp_path / "run")
    bank = engine.ensure_identities(recipe, layout, engine.Ranks())
    from synthface.faces import get_analyzer

    worker = engine.ShardWorker(recipe, layout, noise_renderer(), get_analyzer("dlib"))
    with pytest.raises(InvalidInputError, match="embeds into 128 dimensions and the identities have 512"):
        worker.run_shard(0, bank.vectors)


def test_run_json_gathers_the_stage_records_of_this_jobs_ranks(tmp_path):
    """record_stages copies ranks 0 .. world_size - 1 (a rank not done writing is left out, a rank of an
    earlier, larger job is ignored) and keeps run.json's identity; a starting session removes its own."""
    recipe = small_recipe()
    layout = engine.prepare_output(recipe, tmp_path / "run")
    identity = json.loads(layout.run_file.read_text())
    reports = {rank: {"images_per_s": 10.0 + rank, "bottleneck": "render"} for rank in range(3)}
    for rank in (0, 2):
        layout.write_stage_record(rank, reports[rank])
    assert layout.record_stages(2) == {"rank0": reports[0]}
    layout.write_stage_record(1, reports[1])
    assert layout.record_stages(2) == {"rank0": reports[0], "rank1": reports[1]}
    info = json.loads(layout.run_file.read_text())
    assert info.pop("stages") == {"rank0": reports[0], "rank1": reports[1]} and info == identity
    layout.write_stage_record(1, None)
    assert not layout.stage_record(1).exists()


def test_a_log_line_the_full_disk_refuses_is_no_traceback_on_stderr(tmp_path, capfd):
    import errno
    import logging

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    layout = engine.RunLayout(tmp_path)
    runner._attach_log_file(layout, engine.Ranks())
    (handler,) = [h for h in logging.getLogger("synthface.engine").handlers if isinstance(h, logging.FileHandler)]
    handler.stream, real = FullDisk(), handler.stream
    try:
        logging.getLogger("synthface.engine").warning("a line for a full disk")
    finally:
        handler.stream = real
        logging.getLogger("synthface.engine").removeHandler(handler)
        handler.close()
    assert "Logging error" not in capfd.readouterr().err
