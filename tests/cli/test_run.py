"""`synthface run` end to end on the smoke recipe: formats, kill-and-resume, two ranks (real processes), bad
input and the plan (in process: a subprocess start adds nothing to what they check)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cli_helpers import assert_clean_refusal, run_cli, run_cli_inprocess
from tests.helpers.engine import read_labels, tree_digest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "smoke.toml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    start = time.perf_counter()
    result = run_cli("run", SMOKE, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, time.perf_counter() - start, result


def test_smoke_run_writes_every_format_with_matching_counts(smoke_run):
    out, _, result = smoke_run
    assert "images kept" in result.stdout and "32 of 32 candidates" in result.stdout
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 32 and sum(r["kept"] for r in rows) == 32
    assert {r["identity"] for r in rows} == set(range(8))
    for fmt in ("imagefolder", "recordio", "webdataset", "parquet"):
        labels = read_labels(fmt, out / "export" / fmt)
        assert len(labels) == 32, fmt
        assert sorted(set(labels)) == list(range(8)) and labels.count(0) == 4, fmt
    card = (out / "README.md").read_text()
    assert "synthface run" in card and "tiny" in card
    assert (out / "run.log").read_text().count("shard") >= 3


@pytest.mark.parametrize(("count", "shards"), [
    (20, "7 shards (3 identities each, the last 2), 0 done"),  # once printed as "7 of 3 identities"
    (21, "7 shards (3 identities each), 0 done"),
    (2, "1 shard (2 identities), 0 done"),
])
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, count, shards):
    result = run_cli_inprocess(capsys, "run", SMOKE, "--out", tmp_path / "x", "--dry-run",
                               "--set", f"identities.count={count}")
    assert result.returncode == 0, result.output
    text = " ".join(result.stdout.replace("│", " ").split())
    assert f"identities {count} (max cos 0.3" in text and f"{4 * count} kept from {4 * count} candidates" in text
    assert f"shards {shards}" in text
    assert not (tmp_path / "x").exists()


def test_killed_run_resumes_to_identical_files(smoke_run, tmp_path):
    reference, seconds, _ = smoke_run
    out = tmp_path / "run"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "synthface", "run", str(SMOKE), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    delay = random.Random(os.getpid()).uniform(0.3 * seconds, 0.9 * seconds)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run_cli("run", SMOKE, "--out", out)
    assert result.returncode == 0, result.stderr
    assert tree_digest(out) == tree_digest(reference), f"differs after a kill at {delay:.1f} s"
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


def test_two_ranks_under_torchrun_make_the_same_dataset(smoke_run, tmp_path):
    reference, _, _ = smoke_run
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
         "-m", "synthface", "run", str(SMOKE), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "run.rank0.log").is_file() and (out / "run.rank1.log").is_file()
    digest = {k: v for k, v in tree_digest(out).items() if not k.startswith("run.rank")}
    assert digest == tree_digest(reference)


def test_bad_recipe_value_names_field_and_exit_code(tmp_path, capsys):
    result = run_cli_inprocess(capsys, "run", SMOKE, "--out", tmp_path / "x", "--set", "variation.images_per_identity=0")
    assert_clean_refusal(result, 2, "variation.images_per_identity must be greater than or equal to 1 (given: 0)")
    assert not (tmp_path / "x").exists()


def test_other_recipe_in_output_folder_is_refused(smoke_run, tmp_path, capsys):
    reference, _, _ = smoke_run
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    result = run_cli_inprocess(capsys, "run", SMOKE, "--out", out, "--set", "seed=9")
    assert_clean_refusal(result, 2, "different recipe", "--overwrite")
    assert tree_digest(out) == tree_digest(reference)


def test_export_command_builds_a_format_later(smoke_run, tmp_path, capsys):
    reference, _, _ = smoke_run
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "export" / "webdataset")
    result = run_cli_inprocess(capsys, "export", out, "--format", "webdataset")
    assert result.returncode == 0, result.output
    assert len(read_labels("webdataset", out / "export" / "webdataset")) == 32
    assert_clean_refusal(run_cli_inprocess(capsys, "export", out, "--format", "lmdb"), 2, "unknown export format")


def test_export_refuses_a_run_whose_finalize_record_is_missing_or_damaged(smoke_run, tmp_path, capsys):
    """Completion is read through RunLayout.is_done: a damaged finalize marker is not a finished run."""
    reference, _, _ = smoke_run
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "export" / "parquet")
    (out / "finalize.done").write_text("{not json")
    result = run_cli_inprocess(capsys, "export", out, "--format", "parquet")
    assert_clean_refusal(result, 2, "is not a finished run", "finalize.done is missing or damaged", "synthface run")
    (out / "finalize.done").unlink()
    assert_clean_refusal(run_cli_inprocess(capsys, "export", out, "--format", "parquet"), 2, "is not a finished run")
    assert not (out / "export" / "parquet").exists()


# --------------------------------------------------------------------------- Ctrl-C (#22 class 11)

SMALL = ["identities.count=2", "variation.images_per_identity=2", "generation.steps=1", "compute.shard_size=1",
         "generation.batch_size=2"]

# The child runs the real `synthface run` (cli()); one call inside the run blocks in a native call (open()
# and read() of a FIFO, in C) after saying "ready" on stderr, so the test's SIGINT lands inside it, and
# returns once the test writes to the FIFO. Where: "render" (the main thread, in the renderer) or "write"
# (the write stage's thread, encoding a JPEG, while the main thread renders or waits).
_CHILD = """
import os, sys
from synthface.cli import cli
from synthface.engine import runner, worker

where, fifo, args = sys.argv[1], sys.argv[2], sys.argv[3:]
calls = [0]

def blocking(fn):
    def call(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            sys.stderr.write("ready\\n"); sys.stderr.flush()
            fd = os.open(fifo, os.O_RDONLY)
            os.read(fd, 1); os.close(fd)
        return fn(*a, **k)
    return call

if where == "render":
    build = runner.build_renderer
    runner.build_renderer = lambda recipe, ranks: blocking(build(recipe, ranks))
else:
    worker.encode_jpeg = blocking(worker.encode_jpeg)
sys.exit(cli(args))
"""


def _release(fifo, child) -> None:
    """Let the child's blocked call go on: write one byte to the FIFO it reads. Ctrl-C interrupts its blocking
    open (EINTR), and Python retries the open only after the handler has printed its line, so the FIFO may
    have no reader for a moment: retry while the child lives (ENXIO), never longer."""
    while child.poll() is None:
        try:
            release = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.01)  # the child is about to reopen the FIFO; poll, it is not a fixed wait
            continue
        os.write(release, b"x")
        os.close(release)
        return


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from synthface import engine
    from synthface.recipe import load_recipe

    out = tmp_path_factory.mktemp("small") / "run"
    engine.run(load_recipe(SMOKE, SMALL), out)
    return out


@pytest.mark.parametrize(("where", "presses"), [("render", 1), ("write", 1), ("render", 2)])
def test_ctrl_c_inside_a_native_call_exits_130_and_the_rerun_resumes(small_run, tmp_path, capsys, where, presses):
    out, fifo = tmp_path / "run", tmp_path / "fifo"
    os.mkfifo(fifo)
    args = ["run", str(SMOKE), "--out", str(out), *[a for s in SMALL for a in ("--set", s)]]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, where, str(fifo), *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(600, child.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    lines = []
    for line in child.stderr:  # blocks until the child says it is inside the call: no sleeps
        lines.append(line)
        if line.strip() == "ready":
            break
    child.send_signal(signal.SIGINT)
    for line in child.stderr:  # the first Ctrl-C is taken (two at once could arrive as one)
        lines.append(line)
        if "stopping after the current step" in line:
            break
    if presses == 2:
        child.send_signal(signal.SIGINT)
    else:  # the interrupted call returns; the run stops at its next safe point
        _release(fifo, child)
    rest = child.stderr.read()
    code = child.wait(timeout=600)
    watchdog.cancel()
    text = "".join(lines) + rest
    assert code == 130, text
    assert "aborted; rerun to resume" in text and "Traceback" not in text and "terminate" not in text, text
    assert not (out / "finalize.done").exists()
    if presses == 1:  # stopped cleanly: no temporary folder is left (a second Ctrl-C may leave one, removed on rerun)
        assert not [p for p in out.rglob("*") if ".tmp" in p.name], sorted(out.rglob("*"))
    result = run_cli_inprocess(capsys, *args)
    assert result.returncode == 0, result.output
    assert tree_digest(out) == tree_digest(small_run)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_the_progress_bar_never_passes_100_percent_and_its_rate_is_over_wall_time():
    """#22 class 12: resampling rounds render more than the first round's total; a first batch after a
    long warm-up is no rate of 10 images/s."""
    from synthface.cli.run import _ImagesPerSecond, _RichProgress, _WallTimeRemaining
    from synthface.stages import StageTimes

    now = [0.0]
    bar = _RichProgress(get_time=lambda: now[0])
    bar.start(16, StageTimes())
    try:
        now[0] = 100.0
        bar.advance(10)
        now[0] = 101.0
        bar.advance(10)  # 20 of 16: a resampling round
        task = bar._bar.tasks[0]
        assert task.completed == task.total == 20 and task.percentage == 100.0
        assert str(_ImagesPerSecond().render(task)) == "0.20 img/s"  # 20 images over 101 s, not 10/s
        bar._bar.update(bar._task, total=40)
        assert str(_WallTimeRemaining().render(task)) == "00:01:41"  # 20 more at 20/101 s
    finally:
        bar.stop()
