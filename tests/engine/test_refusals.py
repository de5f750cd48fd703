"""Bad inputs to `synthface run` / `synthface export` and damaged run folders: each one a clear
refusal (exit code, a message naming the problem, no traceback) that leaves everything but the
run's own files untouched; plus kills at each write of a run's identity and concurrent processes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from synthface import distributed, engine, runfolder
from synthface.engine import identities
from synthface.errors import OutputPathError
from synthface.io import safetensors_bytes
from synthface.recipe import load_recipe
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.helpers.engine import noise_renderer, small_recipe, tree_digest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "smoke.toml"
# The smoke recipe cut to 2 identities x 2 images in 2 shards, one denoising step: about a second.
SMALL = ["identities.count=2", "variation.images_per_identity=2", "generation.steps=1", "compute.shard_size=1"]
SMALL_ARGS = [a for item in SMALL for a in ("--set", item)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished small smoke run, made once (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    engine.run(load_recipe(SMOKE, SMALL), out)
    return out


def snapshot(world: Path) -> dict[str, bytes]:
    """Every file under `world` with its bytes, except the files a run owns inside a run folder
    (a folder holding run.json, or the case's --out)."""
    runs = {p.parent for p in world.rglob(engine.RunLayout.RUN_FILE)}
    out = {}
    for p in sorted(world.rglob("*")):
        run = next((r for r in runs if r in p.parents), None)
        if p.is_file() and not (run and engine.RunLayout.owns(p.relative_to(run).parts[0])):
            out[str(p.relative_to(world))] = p.read_bytes()
    return out


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    """`setup(world, finished, stack)` prepares the world and returns the command's arguments."""

    id: str
    setup: Callable[[Path, Path, contextlib.ExitStack], list]
    code: int
    needles: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    creates_nothing: bool = True  # not even the --out folder or a lock file


def run_args(out: Path, *extra: str) -> list:
    return ["run", SMOKE, "--out", out, *SMALL_ARGS, *extra]


def user_folder(world: Path) -> Path:
    folder = world / "project"
    folder.mkdir()
    (folder / "README.md").write_text("my project notes\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


def copy_of(finished: Path, world: Path) -> Path:
    return Path(shutil.copytree(finished, world / "run"))


def holding_lock(world: Path, finished: Path, stack: contextlib.ExitStack) -> list:
    out = copy_of(finished, world)
    stack.enter_context(engine.lock_run(engine.RunLayout(out), engine.Ranks(), "synthface run holder.toml"))
    return run_args(out)


def damaged_run_json(world: Path, finished: Path, stack) -> list:
    out = copy_of(finished, world)
    (out / "run.json").write_text("{not json")
    (out / "recipe.toml").unlink()
    return run_args(out)


def missing_image(world: Path, finished: Path, stack) -> list:
    out = copy_of(finished, world)
    next((out / "shards").rglob("*.jpg")).unlink()
    return ["export", out, "--format", "webdataset"]


def corrupt_manifest(world: Path, finished: Path, stack) -> list:
    out = copy_of(finished, world)
    (out / "manifest.parquet").write_bytes(b"PAR1 truncated")
    return ["export", out, "--format", "webdataset"]


def no_log_space(world: Path, finished: Path, stack) -> list:
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setattr(logging, "FileHandler", full_disk)
    return run_args(world / "new")


def edited_recipe_toml(world: Path, finished: Path, stack) -> Path:
    out = copy_of(finished, world)
    (out / "recipe.toml").write_text((out / "recipe.toml").read_text().replace("seed = 0", "seed = 5", 1))
    return out


def foreign_identities(world: Path, finished: Path, stack) -> list:
    out = copy_of(finished, world)
    other = world / "other"
    engine.run(load_recipe(SMOKE, [*SMALL, "identities.seed=9"]), other)
    shutil.copyfile(other / "identities.safetensors", out / "identities.safetensors")
    shutil.rmtree(other)
    return run_args(out)


def read_only(world: Path, finished: Path, stack) -> list:
    """A folder on a read-only disk: os.access says so (as it does for root on a read-only mount)."""
    real = os.access
    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setattr(os, "access", lambda path, mode, **kw: False if str(path).startswith(str(world)) else real(path, mode, **kw))
    return run_args(world / "new")


CASES = [
    # 2: --overwrite never touches a folder that is not a run, and a refusal creates nothing.
    Case("2-overwrite-user-folder", lambda w, f, s: run_args(user_folder(w), "--overwrite"), 2,
         ("holds no synthface run", "README.md", "--overwrite does not apply")),
    Case("2-user-folder", lambda w, f, s: run_args(user_folder(w)), 2, ("holds no synthface run",)),
    Case("2-out-is-a-file", lambda w, f, s: run_args((w / "f.txt", (w / "f.txt").write_text("x"))[0]), 2,
         ("is a file",)),
    # 6: a second process on a locked run folder (run and export) is refused, naming the holder.
    Case("6-run-locked", holding_lock, 8, ("in use by another synthface process", f"pid {os.getpid()}",
                                           "synthface run holder.toml", "ranks of one job"), creates_nothing=False),
    Case("6-export-locked", lambda w, f, s: ["export", holding_lock(w, f, s)[3], "--format", "parquet"], 8,
         ("in use by another synthface process", f"pid {os.getpid()}"), creates_nothing=False),
    # 9: a recipe that can keep nothing is refused at validation.
    Case("9-min-images", lambda w, f, s: run_args(w / "new", "--set", "filtering.min_images=3"), 2,
         ("filtering.min_images = 3 is more than variation.images_per_identity = 2", "empty")),
    # 10: configuration mistakes, all before the folder is created.
    *[Case(f"10-{name}", lambda w, f, s, extra=extra: run_args(w / "new", "--set", extra), 2, needles)
      for name, extra, needles in [
          ("device-banana", "generation.device=banana", ("generation.device", "banana")),
          ("negative-seed", "seed=-1", ("seed must be greater than or equal to 0",)),
          ("negative-identity-seed", "identities.seed=-3", ("identities.seed must be greater than or equal to 0",)),
      ]],
    Case("10-cuda-on-cpu-build", lambda w, f, s: run_args(w / "new", "--set", "generation.device=cuda"), 2,
         ("generation.device", "'cuda' is not available", "auto")),
    Case("10-analyzer-options", lambda w, f, s: run_args(
        w / "new", "--set", "filtering.enabled=true", "--set", "filtering.analyzer_options={ bogus = 1 }"), 2,
        ("analyzer_options", "bogus"), creates_nothing=False),
    Case("10-rank-not-a-number", lambda w, f, s: run_args(w / "new"), 2, ("RANK='abc' is not an integer",),
         env={"RANK": "abc", "WORLD_SIZE": "2"}),
    Case("10-world-size-zero", lambda w, f, s: run_args(w / "new"), 2, ("world size 0", "impossible"),
         env={"RANK": "0", "WORLD_SIZE": "0"}),
    # 11: damaged run folders name the file and the fix.
    Case("11-run-json-damaged", damaged_run_json, 2, ("run.json is damaged", "restore it"), creates_nothing=False),
    Case("11-export-missing-image", missing_image, 2, ("are missing", "finalize.done", "synthface run"),
         creates_nothing=False),
    Case("11-export-corrupt-manifest", corrupt_manifest, 2, ("manifest.parquet", "rebuilds the manifest"),
         creates_nothing=False),
    Case("11-export-not-a-run", lambda w, f, s: ["export", user_folder(w), "--format", "parquet"], 2,
         ("not a synthface run folder",)),
    # 13: impossible ranks are refused up front instead of waiting.
    Case("13-rank-beyond-world", lambda w, f, s: run_args(w / "new"), 2, ("rank 5 of world size 2", "impossible"),
         env={"RANK": "5", "WORLD_SIZE": "2"}),
    Case("13-negative-rank", lambda w, f, s: run_args(w / "new"), 2, ("impossible",),
         env={"SLURM_PROCID": "-1", "SLURM_NTASKS": "2"}),
    # 15: malformed overrides.
    Case("15-set-empty-key", lambda w, f, s: run_args(w / "new", "--set", "=5"), 2, ("'=5' has an empty field name",)),
    Case("15-set-empty-part", lambda w, f, s: run_args(w / "new", "--set", "identities..count=5"), 2,
         ("empty field name",)),
    # 16: a boolean is not a number.
    Case("16-count-true", lambda w, f, s: run_args(w / "new", "--set", "identities.count=true"), 2,
         ("identities.count must be a valid integer",)),
    Case("16-guidance-false", lambda w, f, s: run_args(w / "new", "--set", "generation.guidance=false"), 2,
         ("generation.guidance must be a valid number",)),
    # 17: a resume with another batch size is refused with the way to continue.
    Case("17-batch-size", lambda w, f, s: run_args(copy_of(f, w), "--set", "generation.batch_size=3"), 2,
         ("generation.batch_size = 8", "--set generation.batch_size=8"), creates_nothing=False),
    # 19: no space for the run log at start-up.
    Case("19-no-space-for-log", no_log_space, 2, ("run.log", "No space left on device"), creates_nothing=False),
    # #22 class 5: numbers that are not finite, settings that apply only with another, absurd world sizes.
    *[Case(f"22-5-{name}", lambda w, f, s, extra=extra: run_args(w / "new", "--set", extra), 2, needles)
      for name, extra, needles in [
          ("nan-share", 'variation.perturbation={ "1.0" = nan }', ("variation.perturbation.1.0", "finite number")),
          ("inf-share", 'variation.perturbation={ "1.0" = 1.0, "0.9" = inf }', ("finite number",)),
          ("inf-min-det-score", "filtering.min_det_score=inf", ("filtering.min_det_score", "finite number")),
          ("nan-guidance", "generation.guidance=nan", ("generation.guidance must be less than or equal to 30 (given: nan)",)),
          ("exclude-max-cos-alone", "identities.exclude_max_cos=0.2",
           ("exclude_max_cos applies only with identities.exclude",)),
      ]],
    *[Case(f"22-5-world-{name}", lambda w, f, s: run_args(w / "new"), 2, needles, env=env)
      for name, env, needles in [
          ("huge", {"RANK": "0", "WORLD_SIZE": str(10**9)}, ("world size 1000000000 is impossible", "WORLD_SIZE")),
          ("negative", {"RANK": "0", "WORLD_SIZE": "-4"}, ("world size -4", "impossible")),
          ("fraction", {"RANK": "0", "WORLD_SIZE": "2.5"}, ("WORLD_SIZE='2.5' is not an integer",)),
          ("underscores", {"RANK": "0", "WORLD_SIZE": "1_000"}, ("WORLD_SIZE='1_000' is not an integer",)),
          ("rank-equal", {"RANK": "3", "WORLD_SIZE": "3"}, ("rank 3 of world size 3", "impossible")),
          ("slurm-huge", {"SLURM_PROCID": "0", "SLURM_NTASKS": str(10**9)}, ("world size 1000000000",)),
      ]],
    Case("22-5-num-shards-huge", lambda w, f, s: run_args(w / "new", "--shard-index", "0", "--num-shards", str(10**9)),
         2, ("world size 1000000000 is impossible",)),
    # #22 class 5: a run's own files edited or swapped after it started are named, never used.
    Case("22-5-recipe-toml-edited", lambda w, f, s: run_args(edited_recipe_toml(w, f, s)), 2,
         ("recipe.toml does not match the run", "fingerprint", "delete it"), creates_nothing=False),
    Case("22-5-recipe-toml-edited-export", lambda w, f, s: ["export", edited_recipe_toml(w, f, s), "--format", "parquet"],
         2, ("recipe.toml does not match the run", "synthface export"), creates_nothing=False),
    Case("22-5-foreign-identities", foreign_identities, 2,
         ("identities.safetensors was not made by this run's recipe", "seed 9 (the recipe: 0)", "delete it"),
         creates_nothing=False),
    # #22 class 4: output folders the file system refuses, before anything is created.
    Case("22-4-name-too-long", lambda w, f, s: run_args(w / ("n" * 300)), 2, ("too long",)),
    Case("22-4-under-a-file", lambda w, f, s: run_args(w / "keep.txt" / "run"), 2,
         ("not a directory", "a part of the path is a file"),),
    Case("22-4-read-only", read_only, 2, ("read-only",)),
    Case("22-4-dry-run-name-too-long", lambda w, f, s: run_args(w / ("n" * 300), "--dry-run"), 2, ("too long",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case, tmp_path, finished, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    world = tmp_path / "world"
    world.mkdir()
    (world / "keep.txt").write_text("the user's own file\n")
    with contextlib.ExitStack() as stack:
        args = case.setup(world, finished, stack)
        before = snapshot(world)
        names_before = sorted(str(p.relative_to(world)) for p in world.rglob("*"))
        for name, value in case.env.items():
            monkeypatch.setenv(name, value)
        result = run_cli_inprocess(capsys, *args)
    assert_clean_refusal(result, case.code, *case.needles)
    assert snapshot(world) == before
    if case.creates_nothing:
        assert sorted(str(p.relative_to(world)) for p in world.rglob("*")) == names_before


# --------------------------------------------------------------------------- #22: text, disks, a run's own files


def test_non_ascii_name_and_description_run_resume_and_export(tmp_path, capsys):
    import tomllib

    out = tmp_path / "run"
    text = ["--set", 'name="smoke 😀 ünï"', "--set", 'description="Plumbing — 😀, tab\there"']
    result = run_cli_inprocess(capsys, *run_args(out, *text))
    assert result.returncode == 0 and "smoke 😀 ünï" in result.stdout, result.output
    saved = tomllib.loads((out / "recipe.toml").read_text(encoding="utf-8"))  # strict TOML, no surrogate escapes
    assert (saved["name"], saved["description"]) == ("smoke 😀 ünï", "Plumbing — 😀, tab\there")
    assert tomllib.loads(json.loads((out / "run.json").read_text())["recipe"])["name"] == "smoke 😀 ünï"
    assert "smoke 😀 ünï" in (out / "README.md").read_text(encoding="utf-8")
    assert run_cli_inprocess(capsys, *run_args(out, *text)).returncode == 0  # resumes (nothing to do)
    # A run made before the fix wrote JSON's surrogate escapes, which TOML rejects: still read.
    (out / "recipe.toml").write_text(
        (out / "recipe.toml").read_text(encoding="utf-8").replace("😀", "\\ud83d\\ude00"), encoding="utf-8")
    shutil.rmtree(out / "export" / "parquet")
    result = run_cli_inprocess(capsys, "export", out, "--format", "parquet")
    assert result.returncode == 0, result.output
    assert (out / "export" / "parquet").is_dir()


def test_an_emoji_on_a_console_that_cannot_show_it_is_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "synthface", *map(str, run_args(tmp_path / "x", "--dry-run",
                           "--set", 'name="smoke 😀"'))], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "plan: smoke ?" in proc.stdout


def test_a_full_disk_mid_run_is_one_message_and_the_rerun_resumes(tmp_path, finished, capsys, monkeypatch):
    out = tmp_path / "run"
    real, writes = Path.write_bytes, []

    def full_after_three(path, data):
        if engine.RunLayout.STAGED in Path(path).parts:
            writes.append(path)
            if len(writes) > 3:  # the 4th candidate: shard 1's second image
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_three)
    result = run_cli_inprocess(capsys, *run_args(out))
    assert_clean_refusal(result, 2, "No space left on device", "shard-000001", "run the same command again")
    assert (out / "shards" / "shard-000000.done").is_file() and not (out / "shards" / "shard-000001").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or "partial" in p.name]
    monkeypatch.setattr(Path, "write_bytes", real)
    result = run_cli_inprocess(capsys, *run_args(out))
    assert result.returncode == 0, result.output
    assert tree_digest(out) == tree_digest(finished)


def test_a_full_disk_while_exporting_is_one_message_and_the_rerun_finishes(tmp_path, finished, capsys, monkeypatch):
    from synthface.export import _common

    out = tmp_path / "run"
    real = _common.fsync_tree

    def full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(_common, "fsync_tree", full)
    assert_clean_refusal(run_cli_inprocess(capsys, *run_args(out)), 2, "No space left on device")
    assert not (out / "finalize.done").exists() and not [p for p in out.rglob("*") if "partial" in p.name]
    monkeypatch.setattr(_common, "fsync_tree", real)
    assert run_cli_inprocess(capsys, *run_args(out)).returncode == 0
    assert tree_digest(out) == tree_digest(finished)


ATTROP = ["generation.model='vec2face-tiny'", "identities.attrop={ estimators = 'tiny', max_steps = 2 }"]


@pytest.mark.parametrize(("content", "needles"), [
    (lambda bank: b"\x00" * 40, ("attrop.safetensors is damaged", "delete it")),
    (lambda bank: safetensors_bytes({"vectors": bank.vectors}), ("is damaged", "status")),
    (lambda bank: safetensors_bytes({"vectors": bank.vectors[:3]}, {"status": json.dumps(
        [{"status": "converged"}] * 3)}), ("was not made for this run", "3 centres", "8 identities")),
    (lambda bank: safetensors_bytes({"vectors": bank.vectors[::-1].copy()}, {"status": json.dumps(
        [{"status": "not_converged"}] * 8)}), ("was not made for this run", "not this recipe's sampled ones")),
])
def test_a_damaged_or_foreign_attrop_file_is_named_never_used(tmp_path, content, needles):
    from synthface.errors import FileFormatError

    recipe = load_recipe(SMOKE, ATTROP)
    layout = engine.RunLayout(tmp_path)
    bank = identities._sample_bank(recipe)
    layout.attrop.write_bytes(content(bank))
    with pytest.raises(FileFormatError) as info:
        engine.ensure_identities(recipe, layout, engine.Ranks())  # no renderer: AttrOP must not run either
    text = " ".join(str(info.value).lower().split())
    assert all(n.lower() in text for n in needles), text
    assert not layout.identities.exists()


# --------------------------------------------------------------------------- overwrite, empty runs, waiting


def test_overwrite_replaces_only_the_run_s_own_files(tmp_path):
    out = tmp_path / "run"
    engine.run(small_recipe(), out, renderer=noise_renderer())
    (out / "my-notes.txt").write_text("kept")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    # A user's files inside the run's own folders (#22): the run deletes only the names it writes there.
    (out / "shards" / "notes.txt").write_text("mine")
    (out / "shards" / "shard-1").mkdir()  # not a name the run writes (shard-000001 is)
    (out / "export" / "my-format").mkdir()
    (out / "export" / "my-format" / "x.bin").write_bytes(b"x")
    (out / "export" / "parquet.bak").write_bytes(b"old export")
    user_files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and
                  p.relative_to(out).parts[0] in ("my-notes.txt", "plots") or p.name in ("notes.txt", "x.bin", "parquet.bak")}
    engine.run(small_recipe(seed=4), out, renderer=noise_renderer(), overwrite=True)
    assert (out / "my-notes.txt").read_text() == "kept" and (out / "plots" / "a.png").read_bytes() == b"png"
    assert {p: p.read_bytes() for p in user_files} == user_files and (out / "shards" / "shard-1").is_dir()
    assert json.loads((out / "run.json").read_text())["fingerprint"] == small_recipe(seed=4).fingerprint()
    for name in os.listdir(out):
        assert engine.RunLayout.owns(name) or name in ("my-notes.txt", "plots")
    reference = tmp_path / "reference"
    engine.run(small_recipe(seed=4), reference, renderer=noise_renderer())
    assert tree_digest(out) == {**tree_digest(reference), **{str(p.relative_to(out)): b for p, b in user_files.items()}}


def test_a_run_that_keeps_nothing_fails_and_keeps_the_manifest(tmp_path, capsys):
    out = tmp_path / "run"
    no_faces = ["--set", "filtering.enabled=true", "--set", "filtering.on_too_few=drop"]  # noise: dlib finds none
    result = run_cli_inprocess(capsys, *run_args(out, *no_faces))
    assert_clean_refusal(result, 9, "kept no image", "no_face: 4", "manifest.parquet")
    rows = load_rows(out / "manifest.parquet")
    assert len(rows) == 4 and not any(r["kept"] for r in rows) and {r["drop_reason"] for r in rows} == {"no_face"}
    assert not (out / "finalize.done").exists() and not (out / "export").exists()
    again = run_cli_inprocess(capsys, *run_args(out, *no_faces))  # still says so, renders nothing
    assert_clean_refusal(again, 9, "kept no image")


def load_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_a_rank_without_rank_0_says_what_it_waits_for(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(distributed, "WAIT_REPORT_SECONDS", 0.2)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="synthface.engine"), \
            pytest.raises(OutputPathError, match="rank 1 of 2 is waiting for rank 0 to write .*identities"):
        engine.run(small_recipe(), out, ranks=engine.Ranks(1, 2), renderer=noise_renderer(), wait_seconds=0.5)
    assert any("is rank 0 running?" in r.getMessage() for r in caplog.records)
    # Rank 0 waiting for rank 1's shards names the first missing one and its rank.
    monkeypatch.setattr(distributed, "WAIT_REPORT_SECONDS", 0.1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthface.engine"), \
            pytest.raises(OutputPathError, match="shard-000001.done, rank 1 of 2"):
        engine.run(small_recipe(), out, ranks=engine.Ranks(0, 2), renderer=noise_renderer(), wait_seconds=0.5)
    assert any("rank 0 is waiting for 2 shard(s)" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- damaged folders heal


def run_identity(out: Path) -> dict:
    """run.json less "stages" (the last session's timings, copied in when the run is finalized)."""
    info = json.loads((out / engine.RunLayout.RUN_FILE).read_text())
    assert info.pop("stages")["rank0"]["images_per_s"] > 0
    return info


def test_damaged_shards_and_run_json_are_repaired_by_a_rerun(tmp_path):
    recipe = small_recipe()
    reference = tmp_path / "reference"
    engine.run(recipe, reference, renderer=noise_renderer())
    out = Path(shutil.copytree(reference, tmp_path / "run"))
    layout = engine.RunLayout(out)
    layout.done_marker(0).write_text("{trunc")  # a damaged marker: the shard is redone
    shutil.rmtree(layout.shard_dir(1) / "images")  # lost images: found before finalizing, the shard redone
    layout.run_file.write_text("")  # damaged identity, recipe.toml intact: rebuilt
    layout.final_done.unlink()
    summary = engine.run(recipe, out, renderer=noise_renderer())
    assert summary.shards_run == [0, 1] and summary.finalized
    assert tree_digest(out) == tree_digest(reference)
    assert run_identity(out) == run_identity(reference)


# --------------------------------------------------------------------------- kills at the identity writes


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the engine catches it."""


@pytest.mark.parametrize("victim", ["run.json", "recipe.toml"])
def test_a_kill_at_each_identity_write_is_repaired_by_a_rerun(tmp_path, monkeypatch, victim):
    recipe = small_recipe()
    reference = tmp_path / "reference"
    engine.run(recipe, reference, renderer=noise_renderer(), command="synthface run r.toml")
    out = tmp_path / "run"
    real = runfolder.atomic_write_bytes

    def dies_mid_write(path, data):
        path = Path(path)
        if path.name == victim:
            (path.parent / f".{path.name}.x1y2.tmp").write_bytes(data[: len(data) // 2])  # the half-written temporary
            raise Killed
        return real(path, data)

    monkeypatch.setattr(runfolder, "atomic_write_bytes", dies_mid_write)
    with pytest.raises(Killed):
        engine.run(recipe, out, renderer=noise_renderer(), command="synthface run r.toml")
    # Complete or absent: no run.json means no identity, and a run.json always carries the recipe.
    assert not (out / "run.json").exists() or "recipe" in json.loads((out / "run.json").read_text())
    monkeypatch.setattr(runfolder, "atomic_write_bytes", real)
    engine.run(recipe, out, renderer=noise_renderer(), command="synthface run r.toml")
    assert (out / "recipe.toml").read_bytes() == (reference / "recipe.toml").read_bytes()
    assert run_identity(out) == run_identity(reference)
    assert tree_digest(out) == tree_digest(reference)


def test_a_real_kill_after_run_json_and_an_old_run_without_recipe_toml_are_repaired(tmp_path, finished, capsys):
    out = tmp_path / "run"
    script = (
        "import os, sys; from synthface import engine, runfolder; from synthface.recipe import load_recipe\n"
        "real = runfolder.atomic_write_bytes\n"
        "def write(path, data):\n"
        "    if str(path).endswith('recipe.toml'): os._exit(137)\n"
        "    return real(path, data)\n"
        "runfolder.atomic_write_bytes = write\n"
        f"engine.run(load_recipe({str(SMOKE)!r}, {SMALL!r}), {str(out)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    assert (out / "run.json").is_file() and not (out / "recipe.toml").exists()
    # The export of a run that lost recipe.toml before this fix (run.json without the recipe) also heals.
    old = Path(shutil.copytree(finished, tmp_path / "old"))
    info = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({k: info[k] for k in ("name", "fingerprint", "command")}))
    (old / "recipe.toml").unlink()
    result = run_cli_inprocess(capsys, *run_args(out))
    assert result.returncode == 0, result.output
    assert tree_digest(out) == tree_digest(finished)
    assert (old / "run.json").exists()
    result = run_cli_inprocess(capsys, *run_args(old))  # the recipe whose fingerprint matches restores it
    assert result.returncode == 0, result.output
    assert (old / "recipe.toml").read_bytes() == (finished / "recipe.toml").read_bytes()


# --------------------------------------------------------------------------- two processes at once


def _cli_in_child(args: list[str], log: str) -> None:
    """A forked child running the CLI with its output in `log` (exit code = the CLI's)."""
    from synthface.cli import cli

    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 - the child ends with os._exit
    code = cli(args)
    sys.stdout.flush()
    os._exit(code)


def run_twice_at_once(args: list, logs: Path) -> list[tuple[int, str]]:
    ctx = multiprocessing.get_context("fork")  # children inherit the imports: no second start-up
    procs = [ctx.Process(target=_cli_in_child, args=([str(a) for a in args], str(logs / f"{i}.log"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [(p.exitcode, (logs / f"{i}.log").read_text()) for i, p in enumerate(procs)]


def check_one_wins(outcomes: list[tuple[int, str]]) -> None:
    """Each process finished or was refused with the holder named; at least one finished."""
    assert 0 in [code for code, _ in outcomes], outcomes
    for code, text in outcomes:
        assert code in (0, 8), text
        assert "Traceback" not in text
        if code == 8:
            assert "in use by another synthface process" in text and "pid" in text


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_two_runs_and_two_exports_at_once_one_wins_and_the_files_are_whole(tmp_path, finished):
    out = tmp_path / "run"
    check_one_wins(run_twice_at_once(run_args(out), tmp_path))
    assert tree_digest(out) == tree_digest(finished)
    shutil.rmtree(out / "export" / "parquet")
    check_one_wins(run_twice_at_once(["export", out, "--format", "parquet"], tmp_path))
    assert tree_digest(out) == tree_digest(finished)
    assert not [p for p in out.rglob("*") if "partial" in p.name or p.name.endswith(".tmp")]


def test_ranks_of_one_job_share_the_folder_but_not_a_rank(tmp_path):
    from synthface.errors import RunLockedError

    layout = engine.RunLayout(tmp_path / "run")
    with engine.lock_run(layout, engine.Ranks(1, 2), "torchrun ... synthface run r.toml"):
        with engine.lock_run(layout, engine.Ranks(0, 2)):
            pass  # another rank of the job: admitted
        with pytest.raises(RunLockedError, match=r"rank 1 of 2, started .*torchrun .* holds this rank"):
            with engine.lock_run(layout, engine.Ranks(1, 2)):
                pass
        with pytest.raises(RunLockedError, match="rank 1 of 2.* holds this folder"):
            with engine.lock_run(layout, engine.Ranks()):  # a lone process while the job runs
                pass
    assert layout.lock_file(1).read_text() == ""  # released: nobody named as holder
    with engine.lock_run(layout, engine.Ranks()):
        pass


def test_a_renderer_that_is_not_callable_is_refused_before_the_folder_exists(tmp_path):
    """Issue 22, class 8: engine.run(renderer=<not a function>) was a TypeError traceback mid-run."""
    from synthface.errors import InvalidInputError
    from tests.helpers.engine import noise_renderer, small_recipe

    images = noise_renderer()(__import__("numpy").zeros((1, 64), "float32"), [0])  # a result, not the function
    with pytest.raises(InvalidInputError, match="takes a callable .* got list. Pass the function itself"):
        engine.run(small_recipe(), tmp_path / "run", renderer=images)
    assert not (tmp_path / "run").exists()


def test_a_plain_function_with_a_pose_recipe_is_refused_naming_it(tmp_path):
    """Issue 22, class 8: a plain f(conditions, seeds) takes no poses; was an AttributeError traceback."""
    from synthface.errors import InvalidInputError
    from tests.helpers.engine import noise_renderer, small_recipe

    recipe = small_recipe(variation={"pose": {"yaw": [-30.0, 30.0]}})
    with pytest.raises(InvalidInputError, match=r"the renderer .*render is a plain function, which takes no poses"):
        engine.run(recipe, tmp_path / "run", renderer=noise_renderer())
    assert not (tmp_path / "run").exists()
