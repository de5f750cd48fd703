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

from synthface import engine
from synthface.errors import OutputPathError
from synthface.recipe import load_recipe
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.engine_doubles import noise_renderer
from tests.test_engine import small_recipe, tree_digest

ROOT = Path(__file__).resolve().parents[1]
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


# --------------------------------------------------------------------------- overwrite, empty runs, waiting


def test_overwrite_replaces_only_the_run_s_own_files(tmp_path):
    out = tmp_path / "run"
    engine.run(small_recipe(), out, renderer=noise_renderer())
    (out / "my-notes.txt").write_text("kept")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    engine.run(small_recipe(seed=4), out, renderer=noise_renderer(), overwrite=True)
    assert (out / "my-notes.txt").read_text() == "kept" and (out / "plots" / "a.png").read_bytes() == b"png"
    assert json.loads((out / "run.json").read_text())["fingerprint"] == small_recipe(seed=4).fingerprint()
    for name in os.listdir(out):
        assert engine.RunLayout.owns(name) or name in ("my-notes.txt", "plots")


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
    monkeypatch.setattr(engine, "WAIT_REPORT_SECONDS", 0.2)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="synthface.engine"), \
            pytest.raises(OutputPathError, match="rank 1 of 2 is waiting for rank 0 to write .*identities"):
        engine.run(small_recipe(), out, ranks=engine.Ranks(1, 2), renderer=noise_renderer(), wait_seconds=0.5)
    assert any("is rank 0 running?" in r.getMessage() for r in caplog.records)
    # Rank 0 waiting for rank 1's shards names the first missing one and its rank.
    monkeypatch.setattr(engine, "WAIT_REPORT_SECONDS", 0.1)
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
    real = engine.atomic_write_bytes

    def dies_mid_write(path, data):
        path = Path(path)
        if path.name == victim:
            (path.parent / f".{path.name}.x1y2.tmp").write_bytes(data[: len(data) // 2])  # the half-written temporary
            raise Killed
        return real(path, data)

    monkeypatch.setattr(engine, "atomic_write_bytes", dies_mid_write)
    with pytest.raises(Killed):
        engine.run(recipe, out, renderer=noise_renderer(), command="synthface run r.toml")
    # Complete or absent: no run.json means no identity, and a run.json always carries the recipe.
    assert not (out / "run.json").exists() or "recipe" in json.loads((out / "run.json").read_text())
    monkeypatch.setattr(engine, "atomic_write_bytes", real)
    engine.run(recipe, out, renderer=noise_renderer(), command="synthface run r.toml")
    assert (out / "recipe.toml").read_bytes() == (reference / "recipe.toml").read_bytes()
    assert run_identity(out) == run_identity(reference)
    assert tree_digest(out) == tree_digest(reference)


def test_a_real_kill_after_run_json_and_an_old_run_without_recipe_toml_are_repaired(tmp_path, finished, capsys):
    out = tmp_path / "run"
    script = (
        "import os, sys; from synthface import engine; from synthface.recipe import load_recipe\n"
        "real = engine.atomic_write_bytes\n"
        "def write(path, data):\n"
        "    if str(path).endswith('recipe.toml'): os._exit(137)\n"
        "    return real(path, data)\n"
        "engine.atomic_write_bytes = write\n"
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
