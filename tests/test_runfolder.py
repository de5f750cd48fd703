"""The run folder: its names, what a run owns (and so may delete), completion records, destinations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthface.distributed import Ranks
from synthface.errors import OutputPathError, RunLockedError
from synthface.runfolder import RunLayout, check_destination, clear_run, lock_run, resample_unit, shard_unit


def test_unit_names_and_their_files():
    layout = RunLayout(Path("/r"))
    assert shard_unit(3) == "shard-000003" and resample_unit(2) == "resample-02"
    assert layout.unit_dir(3) == layout.unit_dir("shard-000003")
    assert layout.done_marker(RunLayout.FINALIZE).name == RunLayout.FINAL_DONE
    assert layout.image_path(1, 5, 7) == "shards/shard-000001/images/0000005/0007.jpg"
    assert layout.image_path("resample-01", 5, 7, full=True) == "shards/resample-01/full/0000005/0007.png"
    assert layout.log_file(Ranks(2, 4)).name == "run.rank2.log" and layout.log_file(Ranks()).name == RunLayout.LOG


def test_a_run_owns_its_names_only():
    assert all(RunLayout.owns(n) for n in RunLayout.names())
    assert RunLayout.owns(".run.json.ab12.tmp") and RunLayout.owns("run.rank3.lock")
    assert not RunLayout.owns("notes.txt")
    assert RunLayout.owns_inside(RunLayout.SHARDS, "shard-000001.done")
    assert RunLayout.owns_inside(RunLayout.EXPORT, "recordio")
    assert not RunLayout.owns_inside(RunLayout.SHARDS, "mine.txt")


def test_clear_run_deletes_the_run_s_files_and_keeps_the_user_s(tmp_path):
    layout = RunLayout(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    layout.unit_dir(0).mkdir(parents=True)
    (layout.shards / "mine.txt").write_text("mine")
    layout.mark_done(0, {"candidates": 1, "kept": 1, "seconds": 0})
    clear_run(layout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "shards"]
    assert [p.name for p in layout.shards.iterdir()] == ["mine.txt"]


def test_a_done_record_needs_its_unit_s_files(tmp_path):
    layout = RunLayout(tmp_path)
    layout.unit_dir(0).mkdir(parents=True)
    layout.mark_done(0, {"candidates": 1, "kept": 1, "seconds": 0})
    assert not layout.is_done(0)  # no manifest, no embeddings
    for name in (layout.MANIFEST, layout.EMBEDDINGS):
        (layout.unit_dir(0) / name).write_bytes(b"x")
    assert layout.is_done(0) and layout.incomplete([0, 1]) == [1]
    layout.done_marker(1).write_text("[1, 2]")
    assert not layout.is_done(1)


def test_a_foreign_destination_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(OutputPathError, match="holds no synthface run"):
        check_destination(RunLayout(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        check_destination(RunLayout(tmp_path / "file"))
    check_destination(RunLayout(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_the_lock_names_its_holder(tmp_path):
    layout = RunLayout(tmp_path)
    with lock_run(layout, Ranks(), command="synthface run a.toml"):
        assert json.loads(layout.lock_file().read_text())["command"] == "synthface run a.toml"
        with pytest.raises(RunLockedError, match="synthface run a.toml"), lock_run(layout, Ranks(0, 2)):
            pass
    assert layout.lock_file().read_text() == ""
